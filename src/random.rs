//! Fresh randomness from the OS CSPRNG, for session tokens and ids, upstream seeds,
//! assertion key ids and request ids.
//!
//! A failure of the OS generator is not recoverable for a security component, so it is
//! reported ([`RandomError`]), never papered over. It is its own error: a caller that
//! needs a token says so itself (a store wraps it as the cause of its failure).
//!
//! The bytes come from the kernel in blocks of [`RANDOM_BLOCK`], kept per thread and
//! handed out once (each byte is zeroed as it is taken): a new session draws 48 bytes
//! (public id and token): one `getrandom(2)` per draw cost 306 ns each, from the block
//! 49 ns (16 bytes) and 97 ns (32 bytes); a whole new session 1.48 -> 0.83 µs
//! (`benches/new_session.rs`).

/// The OS random generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the OS random generator failed")]
pub struct RandomError;

/// `N` fresh random bytes (see the module doc).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    if N > RANDOM_BLOCK {
        os_random(&mut bytes)?;
        return Ok(bytes);
    }
    RANDOM.with(|cell| {
        let mut pool = cell.borrow_mut();
        if pool.taken + N > RANDOM_BLOCK {
            os_random(&mut pool.block)?;
            pool.taken = 0;
        }
        let start = pool.taken;
        if let Some(source) = pool.block.get_mut(start..start + N) {
            bytes.copy_from_slice(source);
            source.fill(0);
        }
        pool.taken += N;
        Ok(bytes)
    })
}

/// Bytes fetched from the kernel at once by [`random_bytes`].
const RANDOM_BLOCK: usize = 512;

/// A thread's unused OS randomness.
struct RandomPool {
    block: [u8; RANDOM_BLOCK],
    /// Bytes already handed out (and zeroed) from the front of `block`.
    taken: usize,
}

thread_local! {
    static RANDOM: std::cell::RefCell<RandomPool> = const {
        std::cell::RefCell::new(RandomPool { block: [0; RANDOM_BLOCK], taken: RANDOM_BLOCK })
    };
}

fn os_random(out: &mut [u8]) -> Result<(), RandomError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| RandomError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_draws_differ_across_block_refills_and_large_sizes_work() {
        let mut seen = std::collections::HashSet::new();
        // 100 draws of 48 bytes cross several 512-byte blocks.
        for _ in 0..100 {
            let token = random_bytes::<32>().unwrap();
            let id = random_bytes::<16>().unwrap();
            assert_ne!(token, [0; 32]);
            assert_ne!(id, [0; 16]);
            assert!(seen.insert(token.to_vec()), "a token repeated");
            assert!(seen.insert(id.to_vec()), "an id repeated");
        }
        let big = random_bytes::<1024>().unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }
}
