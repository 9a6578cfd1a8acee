//! Compressed clusters: raw deflate (no zlib header) with a 4 KiB window,
//! as qemu's qcow writes them, and reads them (a stream that refers
//! further back than 4 KiB is refused there too).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// log2 of the deflate window qcow uses.
const WINDOW_BITS: u8 = 12;

/// Why a compressed cluster could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// The stream is not valid deflate data.
    Corrupt,
    /// It does not fill the cluster exactly.
    WrongLength,
}

/// Inflates `input` into all of `out`, which it must fill exactly.
pub fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), InflateError> {
    let mut d = Decompress::new_with_window_bits(false, WINDOW_BITS);
    let status = d
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(|_| InflateError::Corrupt)?;
    // A stream that stops short of its end but has filled the cluster is
    // accepted, as zlib's Z_BUF_ERROR is there.
    let filled = d.total_out() == out.len() as u64;
    match status {
        Status::StreamEnd | Status::BufError | Status::Ok if filled => Ok(()),
        _ => Err(InflateError::WrongLength),
    }
}

/// Deflates `cluster`; `None` when the result is not smaller than the
/// cluster (it is then written uncompressed).
pub fn deflate(cluster: &[u8]) -> Option<Vec<u8>> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, WINDOW_BITS);
    let mut out = Vec::with_capacity(cluster.len());
    match c.compress_vec(cluster, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) if out.len() < cluster.len() => Some(out),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_round_trip() {
        let cluster: Vec<u8> = (0..4096u32).map(|i| (i / 100) as u8).collect();
        let packed = deflate(&cluster).expect("compressible");
        let mut out = vec![0u8; 4096];
        assert_eq!(inflate(&packed, &mut out), Ok(()));
        assert_eq!(out, cluster);
        let mut short = vec![0u8; 4097];
        assert_eq!(inflate(&packed, &mut short), Err(InflateError::WrongLength));
        assert_eq!(
            inflate(b"\xff\xff\xff", &mut out),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn random_data_is_not_compressed() {
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(deflate(&noise), None);
    }
}
