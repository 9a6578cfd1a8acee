//! `amend` of key slots: QEMU's `state`, `new-secret`, `old-secret`,
//! `keyslot` and `iter-time` options, with QEMU's rules and messages.
//!
//! Activating fills one slot (the first free one unless `keyslot` names
//! it) with the master key for a new passphrase. Erasing empties the slots
//! `keyslot` names or `old-secret` opens, overwriting their key material
//! with random bytes before the header lets go of them. Neither leaves the
//! volume without an active slot unless forced.

use crate::error::{CryptError, Result};
use crate::header::{KeySlot, LuksHeader, KEY_SLOT_DISABLED, NUM_KEY_SLOTS, SALT_LEN};
use crate::keyslot;
use crate::random;
use crate::volume::{slot_iterations, DEFAULT_ITER_TIME_MS};
use crate::SECTOR_SIZE;
use zeroize::Zeroizing;

/// The amend options that concern key slots (without a prefix).
pub const OPTIONS: [&str; 5] = ["state", "new-secret", "old-secret", "keyslot", "iter-time"];

/// The bytes of a volume, offsets counted from the start of its header.
pub trait VolumeStore {
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes `buf` at `offset`.
    fn write(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Makes what was written durable.
    fn flush(&self) -> Result<()>;
}

/// Looks a secret up by id: the passphrase it holds.
pub type SecretFn<'a> = dyn Fn(&str) -> Result<Zeroizing<Vec<u8>>> + 'a;

/// The state `amend` gives the selected key slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Fill a slot with a new passphrase.
    Active,
    /// Erase slots.
    Inactive,
}

/// What `amend -o` asks of the key slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotChange {
    state: SlotState,
    new_secret: Option<String>,
    old_secret: Option<String>,
    keyslot: Option<u32>,
    iter_time_ms: u64,
}

fn refuse(message: impl Into<String>) -> CryptError {
    CryptError::Option(message.into())
}

/// A key slot index as QEMU reads it: a number, negative ones wrapping.
fn parse_keyslot(v: &str, prefix: &str) -> Result<u32> {
    let n = match v.parse::<i64>() {
        Ok(n) => n as u64,
        Err(_) => v
            .parse::<u64>()
            .map_err(|_| refuse(format!("Parameter '{prefix}keyslot' expects a number")))?,
    };
    Ok(n as u32)
}

impl SlotChange {
    /// Reads the options through `get`; None if none of them is given.
    /// `prefix` is how the caller names them (`encrypt.` in qcow2).
    pub fn parse<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        prefix: &str,
    ) -> Result<Option<SlotChange>> {
        if OPTIONS.iter().all(|k| get(k).is_none()) {
            return Ok(None);
        }
        let keyslot = get("keyslot")
            .map(|v| parse_keyslot(v, prefix))
            .transpose()?;
        let iter_time_ms = match get("iter-time") {
            None => DEFAULT_ITER_TIME_MS,
            Some(v) => v
                .parse()
                .map_err(|_| refuse(format!("Parameter '{prefix}iter-time' expects a number")))?,
        };
        let state = match get("state") {
            Some("active") => SlotState::Active,
            Some("inactive") => SlotState::Inactive,
            // QEMU names `state` without the prefix, unlike the numbers.
            Some(other) => {
                return Err(refuse(format!(
                    "Parameter 'state' does not accept value '{other}'"
                )))
            }
            None => return Err(refuse("Parameter 'state' is missing")),
        };
        Ok(Some(SlotChange {
            state,
            new_secret: get("new-secret").map(String::from),
            old_secret: get("old-secret").map(String::from),
            keyslot,
            iter_time_ms,
        }))
    }

    /// Applies the change to the volume whose header is `header` and whose
    /// master key is `key`, writing through `store`; `force` allows
    /// overwriting an active slot and erasing the last one.
    pub fn apply(
        &self,
        header: &mut LuksHeader,
        key: &[u8],
        force: bool,
        secret: &SecretFn<'_>,
        store: &dyn VolumeStore,
    ) -> Result<()> {
        match self.state {
            SlotState::Active => self.activate(header, key, force, secret, store),
            SlotState::Inactive => self.erase(header, force, secret, store),
        }
    }

    fn activate(
        &self,
        header: &mut LuksHeader,
        key: &[u8],
        force: bool,
        secret: &SecretFn<'_>,
        store: &dyn VolumeStore,
    ) -> Result<()> {
        let new_secret = self
            .new_secret
            .as_deref()
            .ok_or_else(|| refuse("'new-secret' is required to activate a keyslot"))?;
        if self.old_secret.is_some() {
            return Err(refuse(
                "'old-secret' must not be given when activating keyslots",
            ));
        }
        let i = match self.keyslot {
            Some(k) => in_range(k)?,
            None => header
                .key_slots
                .iter()
                .position(|s| !s.is_active())
                .ok_or_else(|| refuse("Can't add a keyslot - all keyslots are in use"))?,
        };
        if header.key_slots[i].is_active() && !force {
            return Err(refuse(format!(
                "Refusing to overwrite active keyslot {i} - please erase it first"
            )));
        }
        let password = secret(new_secret)?;
        let (spec, hash) = header.algorithms()?;
        let iterations = slot_iterations(hash, &password, key.len(), self.iter_time_ms)?;
        let mut slot = header.key_slots[i].clone();
        let material = keyslot::fill(&mut slot, spec, hash, key, &password, iterations)?;
        // The material first: the header names it only once it is there.
        store.write(material_offset(&slot), &material)?;
        store.flush()?;
        header.key_slots[i] = slot;
        store.write(0, &header.to_bytes()?)?;
        store.flush()
    }

    fn erase(
        &self,
        header: &mut LuksHeader,
        force: bool,
        secret: &SecretFn<'_>,
        store: &dyn VolumeStore,
    ) -> Result<()> {
        if self.new_secret.is_some() {
            return Err(refuse(
                "'new-secret' must not be given when erasing keyslots",
            ));
        }
        let old = self.old_secret.as_deref().map(secret).transpose()?;
        let opens = |header: &LuksHeader, i: usize, password: &[u8]| -> Result<bool> {
            let (spec, hash) = header.algorithms()?;
            let read = |offset: u64, buf: &mut [u8]| store.read(offset, buf);
            let slot = &header.key_slots[i];
            Ok(keyslot::unlock(header, slot, spec, hash, password, &read)?.is_some())
        };
        let active = header.key_slots.iter().filter(|s| s.is_active()).count();
        let chosen: Vec<usize> = match (self.keyslot, &old) {
            (Some(k), _) => {
                let i = in_range(k)?;
                if let Some(password) = &old {
                    if !opens(header, i, password)? {
                        return Err(refuse(format!(
                            "Given keyslot {i} doesn't contain the given old password for erase operation"
                        )));
                    }
                }
                // --force erases an inactive slot's area again, as QEMU's.
                if !header.key_slots[i].is_active() && !force {
                    return Err(refuse(format!(
                        "Given keyslot {i} is already erased (inactive) "
                    )));
                }
                if active == 1 && !force {
                    return Err(refuse(format!(
                        "Attempt to erase the only active keyslot {i} which will erase all the data in the image irreversibly - refusing operation"
                    )));
                }
                vec![i]
            }
            (None, Some(password)) => {
                let mut matching = Vec::new();
                for i in 0..NUM_KEY_SLOTS {
                    if opens(header, i, password)? {
                        matching.push(i);
                    }
                }
                if matching.is_empty() {
                    return Err(refuse(
                        "No keyslots match given (old) password for erase operation",
                    ));
                }
                if matching.len() == active && !force {
                    return Err(refuse(
                        "All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation",
                    ));
                }
                matching
            }
            (None, None) => {
                return Err(refuse(
                    "To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given",
                ))
            }
        };
        for i in chosen {
            erase_slot(header, i, store)?;
        }
        Ok(())
    }
}

/// `k` as a slot index, or QEMU's refusal.
fn in_range(k: u32) -> Result<usize> {
    if (k as usize) < NUM_KEY_SLOTS {
        Ok(k as usize)
    } else {
        Err(refuse(format!(
            "Invalid keyslot {k} specified, must be between 0 and {}",
            NUM_KEY_SLOTS - 1
        )))
    }
}

fn material_offset(slot: &KeySlot) -> u64 {
    u64::from(slot.key_material_offset) * SECTOR_SIZE
}

/// Overwrites slot `i`'s key material with random bytes, then marks it
/// free in the header (offset and stripes stay, as the spec wants).
fn erase_slot(header: &mut LuksHeader, i: usize, store: &dyn VolumeStore) -> Result<()> {
    let slot = &header.key_slots[i];
    let len = keyslot::material_len(header.key_bytes as usize, slot.stripes);
    let mut garbage = Zeroizing::new(vec![0u8; len]);
    random::fill(&mut garbage)?;
    store.write(material_offset(slot), &garbage)?;
    store.flush()?;
    let slot = &mut header.key_slots[i];
    slot.active = KEY_SLOT_DISABLED;
    slot.iterations = 0;
    slot.salt = [0; SALT_LEN];
    store.write(0, &header.to_bytes()?)?;
    store.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::{CipherAlg, CipherMode, CipherSpec, IvGenAlg};
    use crate::hash::HashAlg;
    use crate::header::HEADER_BYTES;
    use crate::volume::{self, CreateParams};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// A volume in memory.
    struct Disk(RefCell<Vec<u8>>);

    impl VolumeStore for Disk {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
            let d = self.0.borrow();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
            let mut d = self.0.borrow_mut();
            d[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }

    fn secrets(id: &str) -> Result<Zeroizing<Vec<u8>>> {
        match id {
            "a" | "b" | "c" => Ok(Zeroizing::new(format!("pw-{id}").into_bytes())),
            _ => Err(refuse(format!("No secret with id '{id}'"))),
        }
    }

    /// A volume whose slot 0 opens with secret `a`, and its master key.
    fn volume() -> (Disk, LuksHeader, Zeroizing<Vec<u8>>) {
        let spec = CipherSpec {
            alg: CipherAlg::Aes128,
            mode: CipherMode::Xts,
            ivgen: IvGenAlg::Plain64,
            ivgen_hash: None,
        };
        let params = CreateParams {
            spec,
            hash: HashAlg::Sha256,
            iter_time_ms: 1,
        };
        let c = volume::create(params, b"pw-a").unwrap();
        let disk = Disk(RefCell::new(vec![0u8; c.header.payload_bytes() as usize]));
        disk.write(0, &c.header.to_bytes().unwrap()).unwrap();
        disk.write(material_offset(&c.header.key_slots[0]), &c.material)
            .unwrap();
        let read = |o: u64, b: &mut [u8]| disk.read(o, b);
        let key = volume::unlock(c.header.clone(), b"pw-a", &read)
            .unwrap()
            .key;
        (disk, c.header, key)
    }

    fn amend(
        disk: &Disk,
        header: &mut LuksHeader,
        key: &[u8],
        opts: &str,
        force: bool,
    ) -> Result<()> {
        let map: BTreeMap<&str, &str> = opts
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let change = SlotChange::parse(|k| map.get(k).copied(), "")?.unwrap();
        change.apply(header, key, force, &secrets, disk)
    }

    fn opens(disk: &Disk, password: &[u8]) -> Option<usize> {
        let head = LuksHeader::parse(&disk.0.borrow()[..HEADER_BYTES]).unwrap();
        let read = |o: u64, b: &mut [u8]| disk.read(o, b);
        volume::unlock(head, password, &read).ok().map(|u| u.slot)
    }

    #[test]
    fn added_slots_open_and_erased_ones_do_not() {
        let (disk, mut h, key) = volume();
        amend(
            &disk,
            &mut h,
            &key,
            "state=active,new-secret=b,iter-time=1",
            false,
        )
        .unwrap();
        assert_eq!(opens(&disk, b"pw-b"), Some(1));
        amend(
            &disk,
            &mut h,
            &key,
            "state=active,new-secret=c,keyslot=5,iter-time=1",
            false,
        )
        .unwrap();
        assert_eq!(opens(&disk, b"pw-c"), Some(5));
        amend(&disk, &mut h, &key, "state=inactive,old-secret=b", false).unwrap();
        assert_eq!(opens(&disk, b"pw-b"), None);
        amend(&disk, &mut h, &key, "state=inactive,keyslot=5", false).unwrap();
        assert_eq!(opens(&disk, b"pw-c"), None);
        assert_eq!(opens(&disk, b"pw-a"), Some(0));
        // The erased material is not left behind.
        let slot = &h.key_slots[5];
        let at = material_offset(slot) as usize;
        let len = keyslot::material_len(h.key_bytes as usize, slot.stripes);
        assert!(disk.0.borrow()[at..at + len].iter().any(|&b| b != 0));
    }

    #[test]
    fn qemus_refusals() {
        let (disk, mut h, key) = volume();
        let e = |h: &mut LuksHeader, opts: &str| {
            amend(&disk, h, &key, opts, false).unwrap_err().to_string()
        };
        assert_eq!(
            e(&mut h, "state=active"),
            "'new-secret' is required to activate a keyslot"
        );
        assert_eq!(
            e(&mut h, "state=active,new-secret=b,keyslot=0"),
            "Refusing to overwrite active keyslot 0 - please erase it first"
        );
        assert_eq!(
            e(&mut h, "state=active,new-secret=b,keyslot=-1"),
            "Invalid keyslot 4294967295 specified, must be between 0 and 7"
        );
        assert_eq!(
            e(&mut h, "state=inactive,keyslot=3"),
            "Given keyslot 3 is already erased (inactive) "
        );
        assert!(e(&mut h, "state=inactive,keyslot=0")
            .starts_with("Attempt to erase the only active keyslot 0"));
        assert!(
            e(&mut h, "state=inactive,old-secret=a").starts_with("All the active keyslots match")
        );
        assert_eq!(
            e(&mut h, "state=inactive,old-secret=b"),
            "No keyslots match given (old) password for erase operation"
        );
        assert_eq!(
            e(&mut h, "state=inactive,old-secret=zz"),
            "No secret with id 'zz'"
        );
        assert_eq!(e(&mut h, "keyslot=1"), "Parameter 'state' is missing");
        // Forced, the last slot goes.
        amend(&disk, &mut h, &key, "state=inactive,keyslot=0", true).unwrap();
        assert_eq!(opens(&disk, b"pw-a"), None);
    }
}
