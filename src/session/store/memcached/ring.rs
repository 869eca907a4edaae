//! Which server holds a key: a ketama-style consistent-hash ring. Pure: no IO.
//!
//! Each server puts [`POINTS`] points on a 32-bit circle, at hashes of its name as
//! written in `servers` (`"host:port"`); a key belongs to the first point at or after
//! its own hash. The points depend on the names only, so every instance that lists the
//! same servers, in any order, sends a key to the same server; adding a server moves
//! about 1/N of the keys (those now nearer one of its points), removing one moves only
//! its own. SHA-256 stands in for ketama's MD5 (ring is the one crypto library in the
//! tree); the keys are ours alone, so agreeing with other clients' rings is not needed.

/// Points per server (ketama's 160: 40 digests × 4 points).
const POINTS: usize = 160;

/// The ring: points sorted by hash, each naming a server by its index in `servers`.
#[derive(Debug, Clone)]
pub(super) struct Ring {
    points: Vec<(u32, usize)>,
}

/// SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl Ring {
    /// The ring of `servers` (their names as configured).
    pub(super) fn new(servers: &[String]) -> Ring {
        let mut points = Vec::with_capacity(servers.len() * POINTS);
        for (index, name) in servers.iter().enumerate() {
            for round in 0..POINTS / 4 {
                let hash = digest(format!("{name}-{round}").as_bytes());
                for chunk in hash.chunks_exact(4).take(4) {
                    let point = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    points.push((point, index));
                }
            }
        }
        // Sorting on the point, then the server's *name*, makes ties (two servers on
        // one point) independent of the order in the file.
        points.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| servers.get(a.1).cmp(&servers.get(b.1)))
        });
        Ring { points }
    }

    /// The index (in `servers`) of the server that holds `key`.
    pub(super) fn server(&self, key: &str) -> usize {
        let hash = digest(key.as_bytes());
        let hash = u32::from_le_bytes([hash[0], hash[1], hash[2], hash[3]]);
        let at = self.points.partition_point(|(point, _)| *point < hash);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map_or(0, |(_, server)| *server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_order_of_the_servers_does_not_matter() {
        let a = names(&["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]);
        let b = names(&["10.0.0.3:11211", "10.0.0.1:11211", "10.0.0.2:11211"]);
        let (ra, rb) = (Ring::new(&a), Ring::new(&b));
        for i in 0..2000 {
            let key = format!("cloakroom:s:{i}");
            assert_eq!(a[ra.server(&key)], b[rb.server(&key)], "{key}");
        }
    }

    #[test]
    fn keys_spread_and_a_new_server_moves_few_of_them() {
        let three = names(&["a:1", "b:1", "c:1"]);
        let four = names(&["a:1", "b:1", "c:1", "d:1"]);
        let (r3, r4) = (Ring::new(&three), Ring::new(&four));
        let mut per_server = [0usize; 3];
        let mut moved = 0;
        let n = 6000;
        for i in 0..n {
            let key = format!("k{i}");
            let s3 = r3.server(&key);
            per_server[s3] += 1;
            let s4 = r4.server(&key);
            if four[s4] != three[s3] {
                assert_eq!(four[s4], "d:1", "a key moved between old servers");
                moved += 1;
            }
        }
        for count in per_server {
            assert!(count > n / 5, "uneven spread: {per_server:?}");
        }
        assert!(moved > n / 8 && moved < n * 4 / 10, "moved {moved} of {n}");
    }

    #[test]
    fn one_server_holds_everything() {
        let ring = Ring::new(&names(&["only:1"]));
        assert_eq!(ring.server("x"), 0);
        assert_eq!(ring.server(""), 0);
    }
}
