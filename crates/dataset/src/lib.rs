//! Reading embedding sets for recall tests and benchmarks: NumPy `.npy` files (format 1.0,
//! little-endian `f2`/`f4`/`i4`, C order) and a [`Dataset`] of base vectors, queries and exact
//! ground truth.
//!
//! The full MiniLM set lives outside the repository (`EMF_DATA_DIR`, see [`data_dir`]);
//! a 5000-vector subset with its ground truth is committed under
//! `tests/data/` so that the test suite runs on a fresh clone.

use std::path::{Path, PathBuf};

/// A reader's result: the error says which file and what was wrong with it.
pub type Result<T> = std::io::Result<T>;

/// The two kinds of error the reader returns: bad file contents, bad arguments.
struct Error;

impl Error {
    fn corrupt(msg: impl Into<String>) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
    }
    fn invalid(msg: impl Into<String>) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.into())
    }
}

/// A 2-D array read from a `.npy` file, as `f32` (from `f2` or `f4`) or `i32` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Row-major values.
    pub data: Vec<T>,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
}

impl<T> Array<T> {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

struct Header {
    descr: String,
    rows: usize,
    cols: usize,
    offset: usize,
}

fn parse_header(bytes: &[u8]) -> Result<Header> {
    let bad = |what: &str| Error::corrupt(format!(".npy: {what}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a NumPy file (magic)"));
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("unsupported format version {v}"))),
    };
    let text = bytes
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let field = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}':"))? + key.len() + 3;
        Some(text[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad("no descr"))?
        .to_owned();
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad("Fortran order is not supported"));
    }
    let shape = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let (rows, cols) = match dims[..] {
        [r] => (r, 1),
        [r, c] => (r, c),
        _ => return Err(bad("expected a 1-D or 2-D array")),
    };
    Ok(Header {
        descr,
        rows,
        cols,
        offset: start + len,
    })
}

fn read(path: &Path) -> Result<(Header, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let h =
        parse_header(&bytes).map_err(|e| Error::corrupt(format!("{}: {}", path.display(), e)))?;
    Ok((h, bytes))
}

fn body<'a>(h: &Header, bytes: &'a [u8], size: usize, limit: usize) -> Result<&'a [u8]> {
    let rows = h.rows.min(limit);
    let need = rows
        .checked_mul(h.cols)
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| Error::corrupt(".npy: shape overflows"))?;
    bytes
        .get(h.offset..h.offset + need)
        .ok_or_else(|| Error::corrupt(".npy: file shorter than its shape"))
}

/// Reads the first `limit` rows (all with `usize::MAX`) of a `<f2` or `<f4` array as `f32`.
pub fn read_f32(path: &Path, limit: usize) -> Result<Array<f32>> {
    let (h, bytes) = read(path)?;
    let rows = h.rows.min(limit);
    let data = match h.descr.as_str() {
        "<f2" => body(&h, &bytes, 2, limit)?
            .chunks_exact(2)
            .map(|c| erlmcp_flow::vector::f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        "<f4" => body(&h, &bytes, 4, limit)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        d => {
            return Err(Error::invalid(format!(
                "{}: dtype {d} is not <f2 or <f4",
                path.display()
            )))
        }
    };
    Ok(Array {
        data,
        rows,
        cols: h.cols,
    })
}

/// Reads the first `limit` rows of a `<i4` array.
pub fn read_i32(path: &Path, limit: usize) -> Result<Array<i32>> {
    let (h, bytes) = read(path)?;
    if h.descr != "<i4" {
        return Err(Error::invalid(format!(
            "{}: dtype {} is not <i4",
            path.display(),
            h.descr
        )));
    }
    let rows = h.rows.min(limit);
    let data = body(&h, &bytes, 4, limit)?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array {
        data,
        rows,
        cols: h.cols,
    })
}

/// Base vectors, queries and, per query, the ids of the exact nearest base vectors (by dot
/// product, best first).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Base vectors (row `i` has id `i`).
    pub base: Array<f32>,
    /// Query vectors.
    pub queries: Array<f32>,
    /// Exact neighbours per query, best first.
    pub truth: Array<i32>,
}

/// The full MiniLM set's directory (`minilm-wordnet-100k.*.npy`): `EMF_DATA_DIR` when it is set
/// and not empty. Without it, [`Dataset::minilm_or_committed`] falls back to [`committed_dir`].
pub fn data_dir() -> Option<PathBuf> {
    std::env::var_os("EMF_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// The subset committed with the sources (`tests/data/minilm-5k.*`).
pub fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

impl Dataset {
    /// Loads `<dir>/<stem>.base.f16.npy`, `.query.f32.npy` and `.gt100.i32.npy`, keeping the
    /// first `n` base vectors and `q` queries. When `n` is less than the file holds, the
    /// ground truth is recomputed by brute force over those `n` (top 100, f32 dot products).
    pub fn load(dir: &Path, stem: &str, n: usize, q: usize) -> Result<Dataset> {
        let file = |suffix: &str| dir.join(format!("{stem}.{suffix}"));
        let base = read_f32(&file("base.f16.npy"), n)?;
        let queries = read_f32(&file("query.f32.npy"), q)?;
        if base.cols != queries.cols {
            return Err(Error::invalid(format!(
                "base is {}-d but queries are {}-d",
                base.cols, queries.cols
            )));
        }
        let truth = if base.rows < full_rows(&file("base.f16.npy"))? {
            exact_neighbours(&base, &queries, 100)
        } else {
            read_i32(&file("gt100.i32.npy"), q)?
        };
        Ok(Dataset {
            base,
            queries,
            truth,
        })
    }

    /// The MiniLM set from [`data_dir`] when it is there (first `n` vectors, `q` queries),
    /// else the committed 5000-vector subset. The flag says which.
    pub fn minilm_or_committed(n: usize, q: usize) -> Result<(Dataset, bool)> {
        match data_dir() {
            Some(full) if full.join("minilm-wordnet-100k.base.f16.npy").exists() => {
                Ok((Dataset::load(&full, "minilm-wordnet-100k", n, q)?, true))
            }
            _ => Ok((
                Dataset::load(&committed_dir(), "minilm-5k", n.min(5000), q)?,
                false,
            )),
        }
    }

    /// Mean recall@k of `found` (one id list per query) against the ground truth.
    pub fn recall(&self, found: &[Vec<u64>], k: usize) -> f64 {
        let mut hits = 0usize;
        for (i, ids) in found.iter().enumerate() {
            let truth = &self.truth.row(i)[..k.min(self.truth.cols)];
            hits += ids
                .iter()
                .take(k)
                .filter(|id| truth.iter().any(|&t| t as u64 == **id))
                .count();
        }
        hits as f64 / (found.len() * k).max(1) as f64
    }
}

fn full_rows(path: &Path) -> Result<usize> {
    use std::io::Read;
    let mut head = vec![0u8; 4096];
    let mut f = std::fs::File::open(path)?;
    let got = f.read(&mut head)?;
    Ok(parse_header(&head[..got])?.rows)
}

/// The `k` base rows with the largest dot product per query, best first (ties by id).
pub fn exact_neighbours(base: &Array<f32>, queries: &Array<f32>, k: usize) -> Array<i32> {
    let k = k.min(base.rows);
    let mut data = Vec::with_capacity(queries.rows * k);
    let mut scored: Vec<(f32, usize)> = Vec::with_capacity(base.rows);
    for qi in 0..queries.rows {
        let q = queries.row(qi);
        scored.clear();
        scored.extend((0..base.rows).map(|i| {
            let s: f32 = q.iter().zip(base.row(i)).map(|(a, b)| a * b).sum();
            (s, i)
        }));
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        data.extend(scored[..k].iter().map(|&(_, i)| i as i32));
    }
    Array {
        data,
        rows: queries.rows,
        cols: k,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn npy_reader_reads_the_committed_set_and_refuses_damage() {
        let dir = crate::committed_dir();
        let base = crate::read_f32(&dir.join("minilm-5k.base.f16.npy"), 3).unwrap();
        assert_eq!((base.rows, base.cols), (3, 384));
        let norm: f32 = base.row(0).iter().map(|x| x * x).sum();
        assert!(
            (norm - 1.0).abs() < 0.01,
            "MiniLM vectors are unit length: {norm}"
        );
        let gt = crate::read_i32(&dir.join("minilm-5k.gt100.i32.npy"), 2).unwrap();
        assert_eq!(gt.cols, 100);
        assert!(crate::read_i32(&dir.join("minilm-5k.base.f16.npy"), 1).is_err());
        let tmp = std::env::temp_dir().join(format!("emf-npy-{}", std::process::id()));
        let bytes = std::fs::read(dir.join("minilm-5k.query.f32.npy")).unwrap();
        for cut in [0usize, 5, 60, 200] {
            std::fs::write(&tmp, &bytes[..cut]).unwrap();
            let e = crate::read_f32(&tmp, usize::MAX).unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::InvalidData,
                "cut at {cut}: {e}"
            );
        }
        std::fs::remove_file(&tmp).unwrap();
    }
}
