//! Compressed clusters (qcow2.txt "Compressed Clusters Descriptor" and the
//! `compression_type` header field): zlib as raw deflate, or zstd.

use std::io::Read;

/// Failures of (de)compression.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The stored stream does not decompress to a full cluster.
    #[error("compressed cluster does not decompress")]
    Corrupt,
    /// The compressor failed.
    #[error("compression failed: {0}")]
    Failed(String),
}

impl From<CompressError> for crate::error::Error {
    fn from(e: CompressError) -> Self {
        match e {
            CompressError::Corrupt => crate::error::Error::Corrupt,
            CompressError::Failed(m) => crate::error::Error::Errno(5, m),
        }
    }
}

/// The image's compression method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Raw deflate (no zlib header), qcow2's default.
    Zlib,
    /// Zstandard frames.
    Zstd,
}

impl Method {
    /// From the header's `compression_type`.
    pub fn from_type(t: u8) -> Method {
        if t == 1 {
            Method::Zstd
        } else {
            Method::Zlib
        }
    }
    /// The name `info` prints.
    pub fn name(self) -> &'static str {
        match self {
            Method::Zlib => "zlib",
            Method::Zstd => "zstd",
        }
    }

    /// Compresses a cluster; `None` if the result would not be smaller than
    /// `limit` bytes (the cluster is then written uncompressed).
    pub fn compress(self, data: &[u8], limit: usize) -> Result<Option<Vec<u8>>, CompressError> {
        let out = match self {
            Method::Zlib => {
                use flate2::{FlushCompress, Status};
                let mut out = Vec::with_capacity(limit);
                let status = DEFLATE.with(|cell| {
                    let mut z = cell.borrow_mut();
                    z.reset();
                    z.compress_vec(data, &mut out, FlushCompress::Finish)
                });
                match status {
                    Ok(Status::StreamEnd) => out,
                    Ok(_) => return Ok(None),
                    Err(e) => return Err(CompressError::Failed(e.to_string())),
                }
            }
            Method::Zstd => {
                zstd::bulk::compress(data, 0).map_err(|e| CompressError::Failed(e.to_string()))?
            }
        };
        Ok((out.len() < limit).then_some(out))
    }

    /// Decompresses `input` into exactly `out.len()` bytes. Trailing bytes
    /// after the stream (sector padding, the next cluster's data) are ignored.
    pub fn decompress(self, input: &[u8], out: &mut [u8]) -> Result<(), CompressError> {
        match self {
            Method::Zlib => {
                use flate2::{FlushDecompress, Status};
                INFLATE.with(|cell| {
                    let mut z = cell.borrow_mut();
                    z.reset(false);
                    loop {
                        let done = z.total_out() as usize;
                        let used = z.total_in() as usize;
                        if done == out.len() {
                            return Ok(());
                        }
                        let status = z
                            .decompress(&input[used..], &mut out[done..], FlushDecompress::Finish)
                            .map_err(|_| CompressError::Corrupt)?;
                        let progressed =
                            z.total_out() as usize != done || z.total_in() as usize != used;
                        if status == Status::StreamEnd || !progressed {
                            return if z.total_out() as usize == out.len() {
                                Ok(())
                            } else {
                                Err(CompressError::Corrupt)
                            };
                        }
                    }
                })
            }
            Method::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(input)
                    .map_err(|_| CompressError::Corrupt)?
                    .single_frame();
                d.read_exact(out).map_err(|_| CompressError::Corrupt)
            }
        }
    }
}

thread_local! {
    /// Each thread's deflater (qemu's settings: default level, a 4 KiB
    /// window, which qcow2 readers accept) and inflater, reset for every
    /// cluster instead of being set up anew.
    static DEFLATE: std::cell::RefCell<flate2::Compress> = std::cell::RefCell::new(
        flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12),
    );
    static INFLATE: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_methods_round_trip_with_trailing_bytes() {
        let mut data = vec![0u8; 65536];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8 / 16;
        }
        for m in [Method::Zlib, Method::Zstd] {
            let mut c = m.compress(&data, 65536).unwrap().unwrap();
            c.extend_from_slice(&[0xAA; 300]);
            let mut back = vec![0u8; 65536];
            m.decompress(&c, &mut back).unwrap();
            assert_eq!(back, data, "{m:?}");
        }
    }

    #[test]
    fn incompressible_data_is_refused() {
        let mut x = 12345u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        assert!(Method::Zlib.compress(&data, 4096).unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = vec![0u8; 4096];
        assert!(Method::Zlib.decompress(&[0xff; 64], &mut out).is_err());
        assert!(Method::Zstd.decompress(&[0xff; 64], &mut out).is_err());
    }
}
