//! What the CLI tells the user: errors, warnings and notes, each naming where it comes from (the
//! file, and the resource when there is one) and, where it helps, what to do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Where: `FILE`, `FILE:LINE:COLUMN`, `FILE: MCPExternalAuthConfig "name"`, `--backend a=b`, ...
    pub origin: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, origin, message)
    }

    pub fn warning(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, origin, message)
    }

    pub fn note(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Severity::Note, origin, message)
    }

    fn new(severity: Severity, origin: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            origin: origin.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity.label())?;
        if !self.origin.is_empty() {
            write!(f, "{}: ", self.origin)?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// `"name"` with JSON escaping, so odd characters in names cannot forge output lines.
pub fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_compiler() {
        let d = Diagnostic::error(
            "a.yaml: MCPExternalAuthConfig \"x\"",
            "token exchange config is nil",
        )
        .with_hint("add spec.tokenExchange");
        assert_eq!(
            d.to_string(),
            "error: a.yaml: MCPExternalAuthConfig \"x\": token exchange config is nil\n  hint: add spec.tokenExchange"
        );
        assert_eq!(Diagnostic::note("", "n").to_string(), "note: n");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
    }
}
