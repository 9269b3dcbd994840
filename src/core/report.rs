//! What startup validation reports: the named rules, the problems they find, and the bounded
//! report Envoy logs when it refuses a config. Every problem names its rule, the JSON path it is
//! about and what to do, so the error line is enough to fix it.

use std::fmt;

/// A named validation rule. IDs are stable: they are what operators grep for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A strategy needs upstream tokens but no `authServer` is configured.
    V01,
    /// A provider name is not one of `authServer.upstreams`.
    V02,
    /// `authServer.upstreams` is empty.
    V05,
    /// A provider name is empty or blank.
    V06,
    /// The configuration is not valid JSON, or not a JSON object.
    S01,
    /// A field that this filter does not know.
    S02,
    /// A field has the wrong JSON type.
    S03,
    /// A required field is missing or empty.
    S04,
    /// An unknown strategy `type`.
    S05,
    /// A strategy's sub-object does not match its `type`.
    S06,
    /// An unsupported `outgoingAuth.source`.
    S07,
    /// An invalid or duplicate upstream provider name.
    S08,
    /// An invalid header name.
    S09,
    /// An invalid header value (control characters such as CR, LF or NUL).
    S10,
    /// An environment variable that must be set is missing or empty.
    S11,
    /// `authServer.tokens`: both or neither of the metadata layouts, or a bad value.
    S12,
    /// A `tokenExchange` field is invalid.
    S13,
    /// A number is out of its allowed range.
    S14,
    /// `backendNameSources`: empty, an unknown source, or one listed twice.
    S15,
    /// `removeRequestHeaders` / `removeCookies`: an invalid, reserved or repeated name, or too many.
    S16,
    /// `handoff`: an unknown mode, a bad header, a short key, or what an issuing instance
    /// would never do (apply strategies, remove credentials) or could not (hand off nothing).
    S17,
    /// `missingToken`: a challenge value, connect URL or message that cannot be sent, or a
    /// connect URL for a provider that is not configured.
    S18,
    /// Native build only: the upstream tokens are in a Struct (`metadataKey`), which the
    /// dynamic-module ABI cannot read into (it reads top-level keys only).
    S19,
    /// Warning: a client secret is written inline in the configuration.
    W01,
    /// Warning: `tokenExchange.cluster` is not set; the tokenUrl's host names the cluster.
    W02,
}

impl Rule {
    pub const ALL: [Rule; 25] = [
        Rule::V01,
        Rule::V02,
        Rule::V05,
        Rule::V06,
        Rule::S01,
        Rule::S02,
        Rule::S03,
        Rule::S04,
        Rule::S05,
        Rule::S06,
        Rule::S07,
        Rule::S08,
        Rule::S09,
        Rule::S10,
        Rule::S11,
        Rule::S12,
        Rule::S13,
        Rule::S14,
        Rule::S15,
        Rule::S16,
        Rule::S17,
        Rule::S18,
        Rule::S19,
        Rule::W01,
        Rule::W02,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Rule::V01 => "V-01",
            Rule::V02 => "V-02",
            Rule::V05 => "V-05",
            Rule::V06 => "V-06",
            Rule::S01 => "S-01",
            Rule::S02 => "S-02",
            Rule::S03 => "S-03",
            Rule::S04 => "S-04",
            Rule::S05 => "S-05",
            Rule::S06 => "S-06",
            Rule::S07 => "S-07",
            Rule::S08 => "S-08",
            Rule::S09 => "S-09",
            Rule::S10 => "S-10",
            Rule::S11 => "S-11",
            Rule::S12 => "S-12",
            Rule::S13 => "S-13",
            Rule::S14 => "S-14",
            Rule::S15 => "S-15",
            Rule::S16 => "S-16",
            Rule::S17 => "S-17",
            Rule::S18 => "S-18",
            Rule::S19 => "S-19",
            Rule::W01 => "W-01",
            Rule::W02 => "W-02",
        }
    }

    /// Warnings are logged but do not make Envoy refuse the configuration.
    pub fn is_warning(self) -> bool {
        matches!(self, Rule::W01 | Rule::W02)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One thing wrong with a configuration. Never carries a secret: messages name fields and
/// variables, not their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub rule: Rule,
    /// Where in the JSON document, e.g. `outgoingAuth.backends["github-mcp"].upstreamInject`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.rule, self.path, self.message)
    }
}

/// At most this many problems are kept and printed; the rest are only counted.
pub const MAX_REPORTED_PROBLEMS: usize = 100;
/// A problem's path is cut to this many bytes (a very long name must not make a huge log line).
pub const MAX_PATH_BYTES: usize = 512;
/// A problem's message is cut to this many bytes.
pub const MAX_MESSAGE_BYTES: usize = 2_048;
/// A name quoted into a message or path is cut to this many characters.
pub const MAX_QUOTED_CHARS: usize = 128;
/// A list in a message names at most this many items, then says how many more there are.
pub const MAX_LISTED_ITEMS: usize = 10;

/// Collects problems while a configuration is decoded and checked. Memory stays bounded whatever
/// the configuration: the first [`MAX_REPORTED_PROBLEMS`] are kept (each cut to a bounded length),
/// the others only counted. Errors come first: once the list is full, a new error takes the place
/// of the last warning kept, so warnings never hide the errors that refuse a config.
#[derive(Debug, Default)]
pub struct Problems {
    shown: Vec<Problem>,
    /// How many of `shown` are warnings.
    shown_warnings: usize,
    errors: usize,
    warnings: usize,
}

impl Problems {
    pub fn report(&mut self, rule: Rule, path: &str, message: impl Into<String>) {
        if self.count(rule) {
            self.keep(rule, path, message.into());
        }
    }

    /// Like [`Problems::report`], but builds the message only when it will be kept: for messages
    /// that cost something to write (suggestions, lists).
    pub fn report_with(&mut self, rule: Rule, path: &str, message: impl FnOnce() -> String) {
        if self.count(rule) {
            self.keep(rule, path, message());
        }
    }

    /// Counts the problem; true when it is to be kept (making room for it if need be).
    fn count(&mut self, rule: Rule) -> bool {
        if rule.is_warning() {
            self.warnings += 1;
        } else {
            self.errors += 1;
        }
        if self.shown.len() < MAX_REPORTED_PROBLEMS {
            return true;
        }
        if rule.is_warning() || self.shown_warnings == 0 {
            return false;
        }
        match self.shown.iter().rposition(|p| p.rule.is_warning()) {
            Some(i) => {
                self.shown.remove(i);
                self.shown_warnings -= 1;
                true
            }
            None => false,
        }
    }

    fn keep(&mut self, rule: Rule, path: &str, message: String) {
        if rule.is_warning() {
            self.shown_warnings += 1;
        }
        self.shown.push(Problem {
            rule,
            path: cut(path, MAX_PATH_BYTES).into_owned(),
            message: match cut(&message, MAX_MESSAGE_BYTES) {
                std::borrow::Cow::Borrowed(_) => message,
                std::borrow::Cow::Owned(short) => short,
            },
        });
    }

    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    pub fn into_report(self) -> Report {
        Report {
            shown: self.shown,
            errors: self.errors,
            warnings: self.warnings,
        }
    }
}

/// The problems of one configuration, bounded: the first [`MAX_REPORTED_PROBLEMS`] in full, and
/// the true counts of all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    shown: Vec<Problem>,
    errors: usize,
    warnings: usize,
}

/// One line of a [`Report`], ready to log or print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    /// Log it as a warning (the config is not refused for it), else as an error.
    pub warning: bool,
    pub text: String,
}

impl Report {
    /// The problems kept, in the order they were found (at most [`MAX_REPORTED_PROBLEMS`]).
    pub fn problems(&self) -> &[Problem] {
        &self.shown
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.shown.iter()
    }

    /// All the errors found, shown or not.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// All the warnings found, shown or not.
    pub fn warnings(&self) -> usize {
        self.warnings
    }

    pub fn total(&self) -> usize {
        self.errors + self.warnings
    }

    /// How many problems were found but not kept.
    pub fn omitted(&self) -> usize {
        self.total().saturating_sub(self.shown.len())
    }

    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// `... and K more problems` when problems were left out.
    pub fn omitted_line(&self) -> Option<ReportLine> {
        let omitted = self.omitted();
        if omitted == 0 {
            return None;
        }
        let shown_errors = self.shown.iter().filter(|p| !p.rule.is_warning()).count();
        Some(ReportLine {
            warning: shown_errors >= self.errors,
            text: format!(
                "... and {omitted} more problem{}",
                if omitted == 1 { "" } else { "s" }
            ),
        })
    }

    /// Every line to log: one per problem kept, then the `... and K more problems` line if any.
    pub fn lines(&self) -> impl Iterator<Item = ReportLine> + '_ {
        self.shown
            .iter()
            .map(|p| ReportLine {
                warning: p.rule.is_warning(),
                text: p.to_string(),
            })
            .chain(self.omitted_line())
    }
}

impl<'a> IntoIterator for &'a Report {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.shown.iter()
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), marked with `...` when cut.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...", s.get(..end).unwrap_or_default()))
}

/// `a, b, c, ... and 119,997 more`: at most [`MAX_LISTED_ITEMS`] items, each cut to
/// [`MAX_QUOTED_CHARS`] characters. `items` is walked no further than needed.
pub fn bounded_list<'a, I>(items: I) -> String
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: ExactSizeIterator,
{
    let items = items.into_iter();
    let total = items.len();
    let mut out = String::new();
    for (i, item) in items.take(MAX_LISTED_ITEMS).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&cut_chars(item, MAX_QUOTED_CHARS));
    }
    if total > MAX_LISTED_ITEMS {
        out.push_str(&format!(
            ", ... and {} more",
            thousands(total - MAX_LISTED_ITEMS)
        ));
    }
    out
}

/// `119997` as `119,997`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `s` cut to `max` characters, marked with `...` when cut.
fn cut_chars(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(s),
        Some((end, _)) => {
            std::borrow::Cow::Owned(format!("{}...", s.get(..end).unwrap_or_default()))
        }
    }
}

/// The candidate closest to `input`, if one is close enough to be a likely misspelling: the same
/// ignoring case, `_` and `-` (`upstreamInject` → `upstream_inject`), or a few edits away. The work
/// is bounded: inputs longer than 64 characters get no suggestion.
pub fn suggest<'c>(input: &str, candidates: &[&'c str]) -> Option<&'c str> {
    const MAX_INPUT: usize = 64;
    if input.is_empty() || input.chars().nth(MAX_INPUT).is_some() {
        return None;
    }
    let fold = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let folded = fold(input);
    let lowered: Vec<char> = input.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut best: Option<(usize, &'c str)> = None;
    for &candidate in candidates {
        if candidate == input {
            continue;
        }
        if fold(candidate) == folded {
            return Some(candidate);
        }
        let c: Vec<char> = candidate.chars().map(|c| c.to_ascii_lowercase()).collect();
        let limit = (lowered.len().min(c.len()) / 3).clamp(1, 3);
        if lowered.len().abs_diff(c.len()) > limit {
            continue;
        }
        let d = edit_distance(&lowered, &c);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal-string-alignment distance (insertions, deletions, substitutions, adjacent swaps).
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let w = b.len() + 1;
    let mut d: Vec<usize> = vec![0; (a.len() + 1) * w];
    let at = |i: usize, j: usize| i * w + j;
    for i in 0..=a.len() {
        if let Some(x) = d.get_mut(at(i, 0)) {
            *x = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(x) = d.get_mut(at(0, j)) {
            *x = j;
        }
    }
    let get = |d: &Vec<usize>, i: usize, j: usize| d.get(at(i, j)).copied().unwrap_or(usize::MAX);
    for (i, ca) in a.iter().enumerate() {
        for (j, cb) in b.iter().enumerate() {
            let (i1, j1) = (i + 1, j + 1);
            let cost = usize::from(ca != cb);
            let mut v = (get(&d, i, j1).saturating_add(1))
                .min(get(&d, i1, j).saturating_add(1))
                .min(get(&d, i, j).saturating_add(cost));
            if i > 0 && j > 0 && a.get(i - 1) == Some(cb) && b.get(j - 1) == Some(ca) {
                v = v.min(get(&d, i - 1, j - 1).saturating_add(1));
            }
            if let Some(x) = d.get_mut(at(i1, j1)) {
                *x = v;
            }
        }
    }
    get(&d, a.len(), b.len())
}

/// ` did you mean "x"?` for a misspelt `input`, or nothing.
pub(crate) fn did_you_mean(input: &str, candidates: &[&str]) -> String {
    suggest(input, candidates)
        .map(|s| format!("; did you mean {}?", quote(s)))
        .unwrap_or_default()
}

/// JSON path of a backend's strategy, and how messages name it.
pub(crate) fn backend_path(name: &str) -> String {
    format!("outgoingAuth.backends[{}]", quote(name))
}

pub(crate) const DEFAULT_PATH: &str = "outgoingAuth.default";

/// JSON path of member `key` of the object at `path` (`$` is the root): `path.key` for a plain
/// name, else `path["key"]` with JSON escaping, so an unknown field's name cannot forge a log line.
pub(crate) fn member_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
    match (path, plain) {
        ("$", true) => key.to_owned(),
        (_, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", quote(key)),
    }
}

/// `"name"` with JSON escaping, so odd characters in names cannot forge log lines. A name longer
/// than [`MAX_QUOTED_CHARS`] is cut: `"abc"... (1048576 bytes)`.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => serde_json::Value::String(s.to_owned()).to_string(),
        Some((end, _)) => format!(
            "{}... ({} bytes)",
            serde_json::Value::String(s.get(..end).unwrap_or_default().to_owned()),
            s.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_cut_with_a_count() {
        let names: Vec<String> = (0..120_000).map(|i| format!("p{i}")).collect();
        assert_eq!(
            bounded_list(names.iter().map(String::as_str)),
            "p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, ... and 119,990 more"
        );
        assert_eq!(bounded_list(["a", "b"]), "a, b");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn long_names_are_cut_inside_their_quotes() {
        let long = "é".repeat(200);
        let q = quote(&long);
        assert!(
            q.starts_with(&format!("\"{}\"", "é".repeat(MAX_QUOTED_CHARS))),
            "{q}"
        );
        assert!(q.ends_with("\"... (400 bytes)"), "{q}");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let fields = ["providerName"];
        assert_eq!(suggest("providerNme", &fields), Some("providerName"));
        assert_eq!(suggest("provider_name", &fields), Some("providerName"));
        assert_eq!(suggest("PROVIDERNAME", &fields), Some("providerName"));
        assert_eq!(suggest("scope", &fields), None);
        assert_eq!(suggest("providerName", &fields), None);
        assert_eq!(suggest(&"x".repeat(65), &fields), None);
        let types = [
            "unauthenticated",
            "header_injection",
            "upstream_inject",
            "token_exchange",
        ];
        assert_eq!(suggest("upstreamInject", &types), Some("upstream_inject"));
        assert_eq!(suggest("tokenexchang", &types), Some("token_exchange"));
        assert_eq!(suggest("oauth", &types), None);
        assert_eq!(edit_distance(&['a', 'b'], &['b', 'a']), 1);
    }

    #[test]
    fn a_report_keeps_100_problems_and_counts_the_rest() {
        let mut problems = Problems::default();
        for i in 0..250 {
            let mut built = false;
            problems.report_with(Rule::V02, "p", || {
                built = true;
                "m".to_owned()
            });
            assert_eq!(
                built,
                i < MAX_REPORTED_PROBLEMS,
                "message built only when kept"
            );
        }
        for _ in 0..20 {
            problems.report_with(Rule::W01, "p", || {
                panic!("a warning past the limit is not kept")
            });
        }
        let report = problems.into_report();
        assert_eq!((report.errors(), report.warnings()), (250, 20));
        assert_eq!(report.problems().len(), MAX_REPORTED_PROBLEMS);
        assert_eq!(report.lines().count(), MAX_REPORTED_PROBLEMS + 1);
        let more = report.omitted_line().unwrap();
        assert_eq!(more.text, "... and 170 more problems");
        assert!(!more.warning);
    }

    #[test]
    fn errors_are_not_hidden_behind_warnings() {
        let mut problems = Problems::default();
        for _ in 0..150 {
            problems.report(Rule::W01, "w", "warning");
        }
        for i in 0..30 {
            problems.report(Rule::S02, "e", format!("error {i}"));
        }
        let report = problems.into_report();
        assert_eq!((report.errors(), report.warnings()), (30, 150));
        let shown = report.problems();
        assert_eq!(shown.len(), MAX_REPORTED_PROBLEMS);
        assert_eq!(shown.iter().filter(|p| !p.rule.is_warning()).count(), 30);
        assert_eq!(shown.last().map(|p| p.message.as_str()), Some("error 29"));
        let more = report.omitted_line().unwrap();
        assert_eq!(more.text, "... and 80 more problems");
        assert!(more.warning, "only warnings were left out");
    }

    #[test]
    fn paths_and_messages_are_cut() {
        let mut problems = Problems::default();
        problems.report(Rule::S02, &"p".repeat(10_000), "é".repeat(10_000));
        let report = problems.into_report();
        let p = &report.problems()[0];
        assert!(p.path.len() <= MAX_PATH_BYTES && p.path.ends_with("..."));
        assert!(p.message.len() <= MAX_MESSAGE_BYTES && p.message.ends_with("..."));
    }
}
