//! Secret values as `--object secret` gives them: base64 decoding, and
//! secrets encrypted with another secret (`keyid=`, `iv=`): AES-256-CBC
//! with PKCS#7 padding, checked with qemu's messages.

use aes::cipher::{generic_array::GenericArray, BlockDecrypt, KeyInit};
use aes::Aes256;

/// AES block size.
const BLOCK: usize = 16;

/// Decodes standard base64 (padding optional, whitespace at the ends
/// ignored); `None` if a character is outside the alphabet.
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for &c in text.trim_ascii() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

/// Decrypts `input` (base64 text if `base64`) with the 32-byte `key` and
/// the base64 `iv`, and strips the padding; checks in qemu's order.
pub fn decrypt(
    key: &[u8],
    iv: Option<&str>,
    input: &[u8],
    base64: bool,
) -> Result<Vec<u8>, String> {
    if key.len() != 32 {
        return Err("Key should be 32 bytes in length".into());
    }
    let iv = iv.ok_or("IV is required to decrypt secret")?;
    let iv = decode_base64(iv.as_bytes()).ok_or("Invalid base64 data")?;
    if iv.len() != BLOCK {
        return Err(format!("IV should be 16 bytes in length not {}", iv.len()));
    }
    let sealed = if base64 {
        decode_base64(input).ok_or("Invalid base64 data")?
    } else {
        input.to_vec()
    };
    if !sealed.len().is_multiple_of(BLOCK) {
        return Err(format!(
            "Length {} must be a multiple of block size {BLOCK}",
            sealed.len()
        ));
    }
    let cipher = Aes256::new_from_slice(key).map_err(|_| "Key should be 32 bytes in length")?;
    let mut plain = sealed;
    let mut previous: [u8; BLOCK] = iv.try_into().map_err(|_| "bad IV")?;
    for block in plain.chunks_exact_mut(BLOCK) {
        let mut next = [0u8; BLOCK];
        next.copy_from_slice(block);
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
        for (b, p) in block.iter_mut().zip(previous) {
            *b ^= p;
        }
        previous = next;
    }
    let pad = plain.last().copied().unwrap_or(0);
    if usize::from(pad) > BLOCK || usize::from(pad) > plain.len() {
        return Err(format!(
            "Incorrect number of padding bytes ({pad}) found on decrypted data"
        ));
    }
    plain.truncate(plain.len() - usize::from(pad));
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::{decode_base64, decrypt};
    use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
    use aes::Aes256;

    #[test]
    fn base64() {
        assert_eq!(decode_base64(b"c2VjcmV0").as_deref(), Some(&b"secret"[..]));
        assert_eq!(decode_base64(b"YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64(b"Y*=="), None);
    }

    /// AES-256-CBC with PKCS#7 padding, the other way.
    fn seal(key: &[u8; 32], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
        let cipher = Aes256::new_from_slice(key).unwrap();
        let pad = 16 - plain.len() % 16;
        let mut data = plain.to_vec();
        data.extend(std::iter::repeat_n(pad as u8, pad));
        let mut previous = iv;
        for block in data.chunks_exact_mut(16) {
            for (b, p) in block.iter_mut().zip(previous) {
                *b ^= p;
            }
            cipher.encrypt_block(GenericArray::from_mut_slice(block));
            previous.copy_from_slice(block);
        }
        data
    }

    #[test]
    fn sealed_secrets_open_with_their_key() {
        let key = [7u8; 32];
        let iv = [3u8; 16];
        let iv64 = "AwMDAwMDAwMDAwMDAwMDAw==";
        for plain in [&b"pw"[..], b"exactly sixteen!", b""] {
            let sealed = seal(&key, iv, plain);
            assert_eq!(decrypt(&key, Some(iv64), &sealed, false).unwrap(), plain);
        }
        assert_eq!(
            decrypt(&key[..31], Some(iv64), &[0; 16], false).unwrap_err(),
            "Key should be 32 bytes in length"
        );
        assert_eq!(
            decrypt(&key, Some("AAAA"), &[0; 16], false).unwrap_err(),
            "IV should be 16 bytes in length not 3"
        );
        assert_eq!(
            decrypt(&key, None, &[0; 16], false).unwrap_err(),
            "IV is required to decrypt secret"
        );
        assert_eq!(
            decrypt(&key, Some(iv64), &[0; 4], false).unwrap_err(),
            "Length 4 must be a multiple of block size 16"
        );
    }
}
