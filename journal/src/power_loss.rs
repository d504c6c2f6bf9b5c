//! [`PowerLossStorage`]: an in-memory redb storage backend that loses power after a set number
//! of writes and syncs, for crash tests without killing a process: what survives is what was
//! synced plus any subset of the writes made since the last sync, as after a real power cut.

use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// In-memory storage that models a disk with a volatile write cache. Writes land in the
/// cache; `sync_data` makes everything written so far durable. After
/// [`Self::lose_power_after`] `n` more writes, syncs or resizes, the operation that would be
/// the `n + 1`-th fails and so does every later one, as if the machine had stopped there.
/// [`Self::reboot`] then yields the disk as it would come back: the synced bytes plus a
/// seeded random subset of the unsynced writes, applied in any order (each write whole or
/// not at all). Clones share the same disk.
#[derive(Debug, Clone)]
pub struct PowerLossStorage {
    disk: Arc<Mutex<Disk>>,
}

#[derive(Debug, Default)]
struct Disk {
    /// What a reader of the running system sees.
    current: Vec<u8>,
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// Writes and resizes since the last sync, in order.
    unsynced: Vec<Op>,
    /// Operations left before the power goes; `None`: never.
    budget: Option<u64>,
    off: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn powered_off() -> std::io::Error {
    std::io::Error::other("injected power loss")
}

fn apply(bytes: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(offset, data) => {
            let start = usize::try_from(*offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        Op::SetLen(len) => bytes.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

impl Default for PowerLossStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl PowerLossStorage {
    /// An empty disk with power that never fails.
    pub fn new() -> Self {
        Self {
            disk: Arc::new(Mutex::new(Disk::default())),
        }
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets `n` more writes, syncs or resizes happen, then cuts the power.
    pub fn lose_power_after(&self, n: u64) {
        self.disk().budget = Some(n);
    }

    /// Whether the power is off (an operation hit the cut).
    pub fn is_off(&self) -> bool {
        self.disk().off
    }

    /// The disk after a power cut now, with power back on: the synced bytes plus each
    /// unsynced write kept or lost by the `seed`ed coin (kept writes are applied in their
    /// order; a resize is kept with the writes before it). The original stays as it is.
    pub fn reboot(&self, seed: u64) -> PowerLossStorage {
        let disk = self.disk();
        let mut bytes = disk.durable.clone();
        let mut rng = seed;
        for op in &disk.unsynced {
            // splitmix64: every seed, even a small one, gives a well-mixed coin.
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            if matches!(op, Op::SetLen(_)) || (z ^ (z >> 31)).is_multiple_of(2) {
                apply(&mut bytes, op);
            }
        }
        PowerLossStorage {
            disk: Arc::new(Mutex::new(Disk {
                current: bytes.clone(),
                durable: bytes,
                ..Disk::default()
            })),
        }
    }

    fn spend(disk: &mut Disk) -> Result<(), std::io::Error> {
        if disk.off {
            return Err(powered_off());
        }
        match disk.budget {
            Some(0) => {
                disk.off = true;
                Err(powered_off())
            }
            Some(n) => {
                disk.budget = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl StorageBackend for PowerLossStorage {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.disk().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        crate::file::read_from(&self.disk().current, offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut disk = self.disk();
        Self::spend(&mut disk)?;
        let op = Op::SetLen(len);
        apply(&mut disk.current, &op);
        disk.unsynced.push(op);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut disk = self.disk();
        Self::spend(&mut disk)?;
        disk.durable = disk.current.clone();
        disk.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut disk = self.disk();
        Self::spend(&mut disk)?;
        let op = Op::Write(offset, data.to_vec());
        apply(&mut disk.current, &op);
        disk.unsynced.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_bytes_survive_and_unsynced_ones_may_not() {
        let disk = PowerLossStorage::new();
        disk.write(0, b"synced").unwrap();
        disk.sync_data().unwrap();
        disk.write(0, b"SYNCED").unwrap();
        disk.lose_power_after(0);
        assert!(disk.write(6, b"x").is_err());
        assert!(disk.sync_data().is_err());
        assert!(disk.is_off());
        let mut seen = std::collections::HashSet::new();
        for seed in 0..32 {
            let after = disk.reboot(seed);
            let mut buf = [0u8; 6];
            after.read(0, &mut buf).unwrap();
            seen.insert(buf);
            after.write(0, b"again!").unwrap();
        }
        assert_eq!(seen.len(), 2, "either the old or the new bytes, by seed");
        assert!(seen.contains(b"synced") && seen.contains(b"SYNCED"));
    }
}
