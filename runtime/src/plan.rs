//! Memory planning by liveness: buffers whose lifetimes (inclusive step intervals) do not
//! overlap may share arena bytes. Greedy by decreasing size, each buffer at the lowest
//! 64-byte-aligned offset free of every already-placed buffer it overlaps in time.

/// Alignment of every arena buffer, in bytes.
pub const ALIGN: usize = 64;

/// A buffer to place: its size and its inclusive `[first, last]` step interval.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub bytes: usize,
    pub live: (usize, usize),
}

/// Offsets for each request, and the arena size they need.
pub fn plan(reqs: &[Request]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|&a, &b| reqs[b].bytes.cmp(&reqs[a].bytes).then(a.cmp(&b)));
    let mut offsets = vec![0; reqs.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for i in order {
        let r = reqs[i];
        let size = r.bytes.div_ceil(ALIGN) * ALIGN;
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| reqs[j].live.0 <= r.live.1 && r.live.0 <= reqs[j].live.1)
            .map(|&j| (offsets[j], offsets[j] + reqs[j].bytes.div_ceil(ALIGN) * ALIGN))
            .collect();
        busy.sort();
        let mut off = 0;
        for (s, e) in busy {
            if off + size <= s {
                break;
            }
            off = off.max(e);
        }
        offsets[i] = off;
        total = total.max(off + size);
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let reqs = [
            Request { bytes: 100, live: (0, 1) },
            Request { bytes: 100, live: (1, 2) },
            Request { bytes: 100, live: (2, 3) },
        ];
        let (off, total) = plan(&reqs);
        assert_eq!(total, 256);
        assert_eq!(off[0], off[2]);
        assert_ne!(off[0], off[1]);
    }
}
