//! gzip inflate for layer blobs. With the `isal` feature (the default), ISA-L's igzip
//! through the `isal-rs` binding: about twice as fast as zlib-rs on x86-64 with AVX2.
//! Without it (where ISA-L cannot be built), zlib-rs through flate2. Both decode every
//! member of a multi-member stream and fail on a cut or damaged one; the layer's digests
//! are checked after either.

use std::io::{BufRead, Read};

/// A reader of the inflated content of the gzip stream `r` (all its members).
#[cfg(feature = "isal")]
pub(crate) fn gzip<'a, R: BufRead + 'a>(r: R) -> Box<dyn Read + 'a> {
    Box::new(isal::read::Decoder::new(r, isal::Codec::Gzip))
}

/// A reader of the inflated content of the gzip stream `r` (all its members).
#[cfg(not(feature = "isal"))]
pub(crate) fn gzip<'a, R: BufRead + 'a>(r: R) -> Box<dyn Read + 'a> {
    Box::new(flate2::bufread::MultiGzDecoder::new(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn inflate(blob: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        gzip(std::io::BufReader::new(blob)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn multi_member_streams_are_read_whole() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
        let b = b"second member".to_vec();
        let mut blob = gz(&a);
        blob.extend(gz(&b));
        blob.extend(gz(b""));
        let out = inflate(&blob).unwrap();
        assert_eq!(out.len(), a.len() + b.len());
        assert_eq!(&out[..a.len()], &a[..]);
        assert_eq!(&out[a.len()..], &b[..]);
    }

    #[test]
    fn cut_and_damaged_streams_fail() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = gz(&a);
        assert!(inflate(&blob[..blob.len() / 2]).is_err());
        let mut bad = blob.clone();
        let n = bad.len();
        for b in &mut bad[n / 2..n / 2 + 64] {
            *b ^= 0x5a;
        }
        assert!(match inflate(&bad) {
            Err(_) => true,
            Ok(out) => out != a,
        });
    }
}
