//! The JSON form of an ATen region the Python side sends, decoded into
//! [`frontend::aten::AtenGraph`].
//!
//! ```text
//! {"name": "region0",
//!  "inputs": [{"name": "x", "dtype": "float32", "shape": [4, 8]}, ...],
//!  "nodes": [{"target": "aten.addmm.default",
//!             "args": {"self": {"v": 2}, "mat1": {"v": 0}, "beta": 1, "alpha": {"f": 0.5}},
//!             "out": [{"dtype": "float32", "shape": [4, 16]}]}, ...],
//!  "outputs": [5, 7]}
//! ```
//! Arguments: `{"v": i}` a value (inputs first, then nodes), a JSON integer an `int`,
//! `{"f": x}` a float (`"inf"`, `"-inf"`, `"nan"` as strings), `true`/`false`, `null`, a string,
//! `{"dtype": "float16"}`, a list, or `{"other": "..."}` (devices, layouts: not read).

use frontend::aten::{Arg, AtenGraph, AtenInput, AtenNode, TensorMeta};
use ir::DType;
use serde_json::{Map, Value};

/// PyTorch's dtype name (`str(torch.float32)` without `torch.`) to Kiln's.
pub fn dtype_from_torch(name: &str) -> Result<DType, String> {
    match name.strip_prefix("torch.").unwrap_or(name) {
        "float32" | "float" => Ok(DType::F32),
        "float16" | "half" => Ok(DType::F16),
        "bfloat16" => Ok(DType::BF16),
        "int32" | "int" => Ok(DType::I32),
        "int64" | "long" => Ok(DType::I64),
        "bool" => Ok(DType::Bool),
        other => Err(other.to_string()),
    }
}

/// Kiln's dtype to PyTorch's name.
pub fn dtype_to_torch(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::Bool => "bool",
    }
}

fn field<'a>(o: &'a Map<String, Value>, k: &str, what: &str) -> Result<&'a Value, String> {
    o.get(k).ok_or_else(|| format!("{what}: missing field {k:?}"))
}

fn meta(v: &Value, what: &str) -> Result<Option<TensorMeta>, String> {
    let Some(o) = v.as_object() else { return Ok(None) };
    let dtype = field(o, "dtype", what)?.as_str().ok_or_else(|| format!("{what}: dtype must be a string"))?;
    let shape = field(o, "shape", what)?
        .as_array()
        .ok_or_else(|| format!("{what}: shape must be a list"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or_else(|| format!("{what}: shape entries must be non-negative integers")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(TensorMeta { dtype: dtype_from_torch(dtype), shape }))
}

fn arg(v: &Value) -> Result<Arg, String> {
    Ok(match v {
        Value::Null => Arg::None,
        Value::Bool(b) => Arg::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Arg::Int(i),
            None => Arg::Float(n.as_f64().ok_or("a number out of range")?),
        },
        Value::String(s) => Arg::Str(s.clone()),
        Value::Array(items) => Arg::List(items.iter().map(arg).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            if let Some(i) = o.get("v") {
                Arg::Value(i.as_u64().ok_or("a value reference must be a non-negative integer")? as usize)
            } else if let Some(f) = o.get("f") {
                Arg::Float(match f {
                    Value::Number(n) => n.as_f64().ok_or("a float out of range")?,
                    Value::String(s) => match s.as_str() {
                        "inf" => f64::INFINITY,
                        "-inf" => f64::NEG_INFINITY,
                        "nan" => f64::NAN,
                        other => return Err(format!("unknown float spelling {other:?}")),
                    },
                    other => return Err(format!("bad float {other}")),
                })
            } else if let Some(d) = o.get("dtype") {
                Arg::DType(dtype_from_torch(d.as_str().ok_or("a dtype must be a string")?))
            } else if let Some(x) = o.get("other") {
                Arg::Other(x.to_string())
            } else {
                return Err(format!("unknown argument object {v}"));
            }
        }
    })
}

/// Decodes the JSON text of a region.
pub fn parse(text: &str) -> Result<AtenGraph, String> {
    let root: Value = serde_json::from_str(text).map_err(|e| format!("region JSON: {e}"))?;
    let o = root.as_object().ok_or("region JSON: expected an object")?;
    let name = o.get("name").and_then(Value::as_str).unwrap_or("region").to_string();
    let mut inputs = Vec::new();
    for (i, inp) in field(o, "inputs", "region")?.as_array().ok_or("inputs must be a list")?.iter().enumerate() {
        let what = format!("input {i}");
        let io = inp.as_object().ok_or_else(|| format!("{what} must be an object"))?;
        let name = field(io, "name", &what)?.as_str().ok_or_else(|| format!("{what}: name must be a string"))?.to_string();
        let meta = meta(inp, &what)?.ok_or_else(|| format!("{what}: no dtype/shape"))?;
        inputs.push(AtenInput { name, meta });
    }
    let mut nodes = Vec::new();
    for (i, n) in field(o, "nodes", "region")?.as_array().ok_or("nodes must be a list")?.iter().enumerate() {
        let what = format!("node {i}");
        let no = n.as_object().ok_or_else(|| format!("{what} must be an object"))?;
        let target = field(no, "target", &what)?.as_str().ok_or_else(|| format!("{what}: target must be a string"))?.to_string();
        let args = field(no, "args", &what)?
            .as_object()
            .ok_or_else(|| format!("{what}: args must be an object"))?
            .iter()
            .map(|(k, v)| Ok((k.clone(), arg(v).map_err(|e| format!("{what} argument {k:?}: {e}"))?)))
            .collect::<Result<_, String>>()?;
        let out = match no.get("out") {
            Some(Value::Array(items)) => items.iter().map(|m| meta(m, &what)).collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        nodes.push(AtenNode { target, args, out });
    }
    let outputs = field(o, "outputs", "region")?
        .as_array()
        .ok_or("outputs must be a list")?
        .iter()
        .map(|v| v.as_u64().map(|v| v as usize).ok_or_else(|| "outputs must be value indices".to_string()))
        .collect::<Result<_, _>>()?;
    Ok(AtenGraph { name, inputs, nodes, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_argument_kind() {
        let g = parse(
            r#"{"name":"r","inputs":[{"name":"x","dtype":"float32","shape":[2,3]}],
               "nodes":[{"target":"aten.add.Tensor","args":{"self":{"v":0},"other":{"f":"-inf"},"alpha":2,
                          "l":[1,{"f":0.5},null,true,"s",{"dtype":"float64"},{"other":"cpu"}]},
                         "out":[{"dtype":"float32","shape":[2,3]}, null]}],
               "outputs":[1]}"#,
        )
        .unwrap();
        assert_eq!(g.inputs[0].meta.dtype, Ok(DType::F32));
        let n = &g.nodes[0];
        assert_eq!(n.args["self"], Arg::Value(0));
        assert_eq!(n.args["other"], Arg::Float(f64::NEG_INFINITY));
        assert_eq!(n.args["alpha"], Arg::Int(2));
        match &n.args["l"] {
            Arg::List(items) => {
                assert_eq!(items[1], Arg::Float(0.5));
                assert_eq!(items[5], Arg::DType(Err("float64".into())));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(n.out.len(), 2);
        assert!(n.out[1].is_none());
        assert_eq!(g.outputs, vec![1]);
    }

    #[test]
    fn malformed_json_is_an_error() {
        assert!(parse("{").is_err());
        assert!(parse(r#"{"inputs":[],"nodes":[{"target":1,"args":{}}],"outputs":[]}"#).unwrap_err().contains("target"));
    }
}
