//! The `missingToken` templates: the connect URL and the connect message an MCP answer carries
//! when a backend's upstream token is missing ([`crate::core::mcp`] builds the answers). Configuration
//! checks each template once ([`url_template_problem`], [`message_template_problem`]); a request
//! fills them in, percent-encoding what it puts into a URL.

/// The connect message when none is configured.
pub const DEFAULT_MESSAGE_TEMPLATE: &str = "Connect your {provider} account to use this tool.";
/// Longest message template, and longest rendered message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Longest connect URL template, and longest filled URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest elicitation id, in bytes.
pub const MAX_ELICITATION_ID_BYTES: usize = 128;
const PROVIDER_PLACEHOLDER: &str = "{provider}";
const ELICITATION_ID_PLACEHOLDER: &str = "{elicitationId}";

/// RFC 3986 §2.3 unreserved characters: the only bytes a filled-in value keeps as they are.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Characters a URL template may hold outside its placeholders: RFC 3986 unreserved, gen-delims,
/// sub-delims and `%` (checked for two hex digits separately). No space, quote, backslash, brace,
/// `<`, `>`, `^`, `` ` ``, `|`, control or non-ASCII byte.
fn is_url_char(c: u8) -> bool {
    is_unreserved(c) || b":/?#[]@!$&'()*+,;=%".contains(&c)
}

/// `value` percent-encoded: unreserved bytes kept, every other byte of its UTF-8 as `%XX`.
pub fn percent_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let hex = |n: u8| HEX.get(usize::from(n)).map_or('0', |&c| char::from(c));
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(hex(b >> 4));
            out.push(hex(b & 0x0f));
        }
    }
    out
}

/// Why `template` cannot be a connect URL template, if it cannot: at most [`MAX_URL_BYTES`], an
/// absolute `https://` (or `http://`) URL with a host, only URL characters, well-formed `%XX`,
/// and braces only as the placeholders `{provider}` and `{elicitationId}`.
pub fn url_template_problem(template: &str) -> Option<&'static str> {
    if template.len() > MAX_URL_BYTES {
        return Some("is longer than 2048 bytes");
    }
    let lower = template.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return Some("must start with https:// (or http://)");
    };
    if rest.is_empty() || rest.starts_with(['/', '?', '#', ':']) {
        return Some("has no host");
    }
    let bytes = template.as_bytes();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        let tail = bytes.get(i..).unwrap_or_default();
        if c == b'{' {
            let Some(placeholder) = [PROVIDER_PLACEHOLDER, ELICITATION_ID_PLACEHOLDER]
                .into_iter()
                .find(|p| tail.starts_with(p.as_bytes()))
            else {
                return Some("has a brace that is not {provider} or {elicitationId}");
            };
            i += placeholder.len();
            continue;
        }
        if c == b'%' {
            let hex = tail
                .get(1..3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !hex {
                return Some("has a % that is not followed by two hex digits");
            }
        } else if !is_url_char(c) {
            return Some(
                "contains a character URLs do not allow (a space, quote, backslash, control or \
                 non-ASCII character, a lone brace, <, >, ^, ` or |)",
            );
        }
        i += 1;
    }
    None
}

/// The connect URL: `template` with every `{provider}` and `{elicitationId}` replaced by the
/// percent-encoded value ([`percent_encode`]); nothing else is expanded. `Err` names the
/// template's problem ([`url_template_problem`]) or says the filled URL is too long.
pub fn connect_url(
    template: &str,
    provider: &str,
    elicitation_id: &str,
) -> Result<String, &'static str> {
    if let Some(problem) = url_template_problem(template) {
        return Err(problem);
    }
    let url = template
        .replace(PROVIDER_PLACEHOLDER, &percent_encode(provider))
        .replace(ELICITATION_ID_PLACEHOLDER, &percent_encode(elicitation_id));
    if url.len() > MAX_URL_BYTES {
        return Err("the filled-in connect URL is longer than 2048 bytes");
    }
    Ok(url)
}

/// Why `template` cannot be a connect message template, if it cannot: plain text of at most
/// [`MAX_MESSAGE_BYTES`] without control characters, naming the provider through `{provider}`.
pub fn message_template_problem(template: &str) -> Option<&'static str> {
    if template.len() > MAX_MESSAGE_BYTES {
        return Some("is longer than 512 bytes");
    }
    if template.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    if !template.contains(PROVIDER_PLACEHOLDER) {
        return Some("does not name the provider with {provider}");
    }
    None
}

/// The connect message: `template` with every `{provider}` replaced by `provider` as plain text;
/// nothing else is expanded. JSON escaping happens when an answer is built.
pub fn connect_message(template: &str, provider: &str) -> Result<String, &'static str> {
    if let Some(problem) = message_template_problem(template) {
        return Err(problem);
    }
    if provider.chars().any(char::is_control) {
        return Err("the provider name contains a control character");
    }
    let message = template.replace(PROVIDER_PLACEHOLDER, provider);
    if message.len() > MAX_MESSAGE_BYTES {
        return Err("the connect message is longer than 512 bytes");
    }
    Ok(message)
}

/// Why `id` cannot be an elicitation id, if it cannot: 1 to [`MAX_ELICITATION_ID_BYTES`] visible
/// ASCII characters. (The spec only asks it to be unique within the server; the adapter can use
/// the request's `x-request-id`.)
pub fn elicitation_id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("is empty");
    }
    if id.len() > MAX_ELICITATION_ID_BYTES {
        return Some("is longer than 128 bytes");
    }
    if !id.bytes().all(|c| c.is_ascii_graphic()) {
        return Some("must be visible ASCII characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_percent_encode_values_and_expand_nothing_else() {
        assert_eq!(percent_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(
            percent_encode("a b/c?d&e=f#g%h"),
            "a%20b%2Fc%3Fd%26e%3Df%23g%25h"
        );
        assert_eq!(percent_encode("é{}"), "%C3%A9%7B%7D");
        let url = connect_url(
            "https://gw.example/c/{provider}?id={elicitationId}&again={provider}",
            "git hub",
            "a&b=c/{provider}",
        )
        .unwrap();
        assert_eq!(
            url,
            "https://gw.example/c/git%20hub?id=a%26b%3Dc%2F%7Bprovider%7D&again=git%20hub"
        );
        assert_eq!(
            connect_url("https://gw.example/c?x=%2F", "p", "i").unwrap(),
            "https://gw.example/c?x=%2F"
        );
        assert_eq!(
            connect_message("Link {provider} ({provider}) {other}", "github").unwrap(),
            "Link github (github) {other}"
        );
        assert_eq!(
            connect_message(DEFAULT_MESSAGE_TEMPLATE, "github").unwrap(),
            "Connect your github account to use this tool."
        );
    }

    #[test]
    fn bad_templates_and_ids_are_refused_with_a_reason() {
        for bad in [
            "",
            "gw.example/connect",
            "ftp://gw.example/",
            "https://",
            "https:///path",
            "https://gw.example/{user}",
            "https://gw.example/{provider",
            "https://gw.example/a b",
            "https://gw.example/\"q\"",
            "https://gw.example/a\\b",
            "https://gw.example/\n",
            "https://gw.example/é",
            "https://gw.example/%zz",
            "https://gw.example/%2",
            "https://gw.example/<x>",
        ] {
            assert!(url_template_problem(bad).is_some(), "{bad:?}");
            assert!(connect_url(bad, "p", "i").is_err());
        }
        let long = format!("https://gw.example/{}", "a".repeat(MAX_URL_BYTES));
        assert!(url_template_problem(&long).is_some());
        let fills_too_long = format!("https://gw.example/{}{{provider}}", "a".repeat(2000));
        assert!(url_template_problem(&fills_too_long).is_none());
        assert!(connect_url(&fills_too_long, &"é".repeat(40), "i").is_err());
        assert!(url_template_problem("HTTPS://gw.example:8443/c/{provider}").is_none());
        assert!(url_template_problem("http://localhost:8080/c?e={elicitationId}").is_none());

        assert!(message_template_problem("Connect your account").is_some());
        assert!(message_template_problem("Connect {provider}\n").is_some());
        assert!(message_template_problem(&format!("{{provider}}{}", "x".repeat(600))).is_some());
        assert!(connect_message("{provider}", "a\u{7}").is_err());
        assert!(
            connect_message(&format!("{{provider}}{}", "x".repeat(500)), &"p".repeat(20)).is_err()
        );

        for bad in ["", "a b", "a\u{0}", "é", &"x".repeat(129)] {
            assert!(elicitation_id_problem(bad).is_some(), "{bad:?}");
        }
    }
}
