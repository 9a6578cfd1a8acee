//! A 16-byte block as the four little-endian 32-bit words Serpent and
//! Twofish compute on.

/// The four little-endian words of the 16-byte `block`.
pub(crate) fn from_block(block: &[u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            block[4 * i],
            block[4 * i + 1],
            block[4 * i + 2],
            block[4 * i + 3],
        ])
    })
}

/// The 16-byte block of the four little-endian `words`.
pub(crate) fn to_block(words: [u32; 4]) -> [u8; 16] {
    let mut block = [0; 16];
    for (chunk, w) in block.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    block
}
