//! `tpm-keystore` in the state directory: what the key store needs to find
//! its TPM objects again. Nothing in it is secret in the clear:
//!
//! ```text
//! "fidoseal-tpm" | format 1 | generation (32) | primary name (u8 len + bytes)
//!   | HMAC key TPMT_PUBLIC (u16 len + bytes) | HMAC key TPM2B_PRIVATE (u16 len + bytes)
//! ```
//!
//! The generation is the primary's `unique.x`, public by nature; the primary
//! name (nameAlg ‖ SHA-256 of its public area) tells at start whether the
//! TPM still has the owner seed these objects were made under; the HMAC
//! key's private part is encrypted by the TPM under that primary.
//!
//! Format 2 (a generation bound to the boot state, `[keystore] pcrs`) adds
//! `| approval key name (u8 len + bytes)`: the objects' authPolicy is
//! TPM2_PolicyAuthorize of that key (pcr_policy.rs). Format 1 files are
//! unbound, and written byte for byte as before.

const MAGIC: &[u8] = b"fidoseal-tpm";
const FORMAT: u8 = 1;
const FORMAT_BOUND: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    pub generation: [u8; 32],
    pub primary_name: Vec<u8>,
    pub hmac_public: Vec<u8>,
    pub hmac_private: Vec<u8>,
    /// Bound generations: the name of the approval key in their authPolicy.
    pub approval_key_name: Option<Vec<u8>>,
}

impl Persisted {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            MAGIC.len() + 40 + self.primary_name.len() + self.hmac_public.len() + self.hmac_private.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(if self.approval_key_name.is_some() { FORMAT_BOUND } else { FORMAT });
        out.extend_from_slice(&self.generation);
        out.push(self.primary_name.len() as u8);
        out.extend_from_slice(&self.primary_name);
        for part in [&self.hmac_public, &self.hmac_private] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        if let Some(name) = &self.approval_key_name {
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let rest = bytes.strip_prefix(MAGIC).ok_or("not a fidoseal TPM key store file")?;
        let (&format, rest) = rest.split_first().ok_or("truncated")?;
        if format != FORMAT && format != FORMAT_BOUND {
            return Err(format!("format {format} is not {FORMAT} or {FORMAT_BOUND} (written by a newer fidoseald?)"));
        }
        if rest.len() < 33 {
            return Err("truncated".into());
        }
        let (generation, rest) = rest.split_at(32);
        let (&name_len, rest) = rest.split_first().ok_or("truncated")?;
        let (primary_name, mut rest) = split(rest, usize::from(name_len))?;
        let mut parts = Vec::new();
        for _ in 0..2 {
            if rest.len() < 2 {
                return Err("truncated".into());
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let (part, tail) = split(&rest[2..], len)?;
            parts.push(part.to_vec());
            rest = tail;
        }
        let mut approval_key_name = None;
        if format == FORMAT_BOUND {
            let (&len, tail) = rest.split_first().ok_or("truncated")?;
            let (name, tail) = split(tail, usize::from(len))?;
            if name.is_empty() {
                return Err("an empty field".into());
            }
            approval_key_name = Some(name.to_vec());
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(format!("{} unexpected bytes at the end", rest.len()));
        }
        let hmac_private = parts.pop().unwrap_or_default();
        let hmac_public = parts.pop().unwrap_or_default();
        if primary_name.is_empty() || hmac_public.is_empty() || hmac_private.is_empty() {
            return Err("an empty field".into());
        }
        Ok(Self {
            generation: generation.try_into().map_err(|_| "truncated")?,
            primary_name: primary_name.to_vec(),
            hmac_public,
            hmac_private,
            approval_key_name,
        })
    }
}

fn split(bytes: &[u8], len: usize) -> Result<(&[u8], &[u8]), String> {
    if bytes.len() < len {
        return Err("truncated".into());
    }
    Ok(bytes.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let p = Persisted {
            generation: [5; 32],
            primary_name: vec![0, 11, 1, 2],
            hmac_public: vec![3; 50],
            hmac_private: vec![4; 90],
            approval_key_name: None,
        };
        let bytes = p.encode();
        assert_eq!(Persisted::decode(&bytes), Ok(p));
        for cut in 0..bytes.len() {
            assert!(Persisted::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Persisted::decode(&longer).unwrap_err().contains("unexpected"));
        let mut future = bytes;
        future[MAGIC.len()] = 3;
        assert!(Persisted::decode(&future).unwrap_err().contains("newer"));
        assert!(Persisted::decode(b"0123456789abcdef0123456789abcdef").is_err());
    }

    #[test]
    fn bound_generations_round_trip_and_unbound_files_keep_format_1() {
        let unbound = Persisted {
            generation: [5; 32],
            primary_name: vec![0, 11, 1, 2],
            hmac_public: vec![3; 50],
            hmac_private: vec![4; 90],
            approval_key_name: None,
        };
        assert_eq!(unbound.encode()[MAGIC.len()], FORMAT);
        let bound = Persisted { approval_key_name: Some(vec![0, 11, 9, 9]), ..unbound.clone() };
        let bytes = bound.encode();
        assert_eq!(bytes[MAGIC.len()], FORMAT_BOUND);
        assert_eq!(bytes.len(), unbound.encode().len() + 5);
        assert_eq!(Persisted::decode(&bytes), Ok(bound));
        for cut in unbound.encode().len()..bytes.len() {
            assert!(Persisted::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
