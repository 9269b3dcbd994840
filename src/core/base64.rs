//! Base64 (RFC 4648), host-independent.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Standard base64 with padding (RFC 4648 §4).
pub fn standard(input: &[u8]) -> String {
    encode(input, STANDARD, true)
}

/// URL-safe base64 without padding (RFC 4648 §5): a header value of `[A-Za-z0-9_-]` only.
pub fn url_safe(input: &[u8]) -> String {
    encode(input, URL_SAFE, false)
}

fn encode(input: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let sextet = |n: u32, shift: u32| {
        alphabet
            .get(((n >> shift) & 0x3f) as usize)
            .map_or('=', |&c| char::from(c))
    };
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sextet(n, 18));
        out.push(sextet(n, 12));
        if chunk.len() > 1 {
            out.push(sextet(n, 6));
        } else if pad {
            out.push('=');
        }
        if chunk.len() > 2 {
            out.push(sextet(n, 0));
        } else if pad {
            out.push('=');
        }
    }
    out
}

/// Decodes [`url_safe`]'s output, strictly: any other character, a length no encoding has, or
/// non-zero unused bits are `None`.
pub fn decode_url_safe(text: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| URL_SAFE.iter().position(|&a| a == c).map(|v| v as u32);
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i as u32);
        }
        let bytes = n.to_be_bytes();
        let keep = chunk.len() - 1;
        // The bits a short final chunk does not use must be zero (one encoding per input).
        if bytes
            .get(1 + keep..)
            .is_some_and(|rest| rest.iter().any(|&b| b != 0))
        {
            return None;
        }
        out.extend_from_slice(bytes.get(1..=keep)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(standard(input.as_bytes()), expected);
        }
    }

    #[test]
    fn url_safe_base64_round_trips_and_decodes_strictly() {
        assert_eq!(url_safe(b"foob"), "Zm9vYg");
        assert_eq!(url_safe(&[0xfb, 0xff]), "-_8");
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = url_safe(&data);
            assert!(text
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            assert_eq!(decode_url_safe(text.as_bytes()), Some(data));
        }
        assert_eq!(decode_url_safe(b"Zm9vYg=="), None, "no padding");
        assert_eq!(decode_url_safe(b"Zm9v+g"), None, "standard alphabet");
        assert_eq!(decode_url_safe(b"Z"), None, "impossible length");
        assert_eq!(decode_url_safe(b"Zh"), None, "unused bits set");
        assert_eq!(decode_url_safe(b""), Some(vec![]));
    }
}
