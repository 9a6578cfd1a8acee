//! CRC-32C (Castagnoli), the checksum of every VHDX header, region table
//! and log entry ([MS-VHDX] 2.2.2.1: "CRC-32C ... with the Castagnoli
//! polynomial 0x1EDC6F41").

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// Slice-by-8 tables: log entries of a megabyte are checked at open.
static TABLES: [[u32; 256]; 8] = tables();

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut n = 1;
    while n < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[n - 1][i];
            t[n][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        n += 1;
    }
    t
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    update(!0, data) ^ !0
}

/// CRC-32C of `data` with the four bytes at `field` read as zeros: the
/// checksum of a structure that holds its own checksum there.
pub fn crc32c_without(data: &[u8], field: usize) -> u32 {
    let c = update(!0, &data[..field]);
    let c = update(c, &[0; 4]);
    update(c, &data[field + 4..]) ^ !0
}

fn update(mut c: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][b[4] as usize]
            ^ TABLES[2][b[5] as usize]
            ^ TABLES[1][b[6] as usize]
            ^ TABLES[0][b[7] as usize];
    }
    for &b in chunks.remainder() {
        c = (c >> 8) ^ TABLES[0][((c ^ u32::from(b)) & 0xff) as usize];
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut slow = !0u32;
        for &b in &long {
            slow ^= u32::from(b);
            for _ in 0..8 {
                slow = if slow & 1 != 0 {
                    (slow >> 1) ^ POLY
                } else {
                    slow >> 1
                };
            }
        }
        assert_eq!(crc32c(&long), !slow);
    }

    #[test]
    fn without_field() {
        let mut a = [7u8; 64];
        a[4..8].copy_from_slice(&[1, 2, 3, 4]);
        let mut b = a;
        b[4..8].fill(0);
        assert_eq!(crc32c_without(&a, 4), crc32c(&b));
    }
}
