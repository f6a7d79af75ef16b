//! Slurm hostlist expressions: `node[01-04,07]`, `a[1-2]b[3-4]`,
//! `n[1-3],gpu[08-09],login`, expanded in the order `scontrol show hostnames`
//! gives (the leftmost bracket varies slowest).

/// Most names one expression may expand to (a guard against typos such as
/// `n[1-999999999]`).
pub const MAX_HOSTS: usize = 1 << 20;

/// Why a hostlist expression cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad hostlist {expr:?}: {why}")]
pub struct HostlistError {
    /// The expression.
    pub expr: String,
    /// What is wrong with it.
    pub why: String,
}

/// Expand a hostlist expression into host names, in order (duplicates are
/// kept, as Slurm keeps them). Whitespace around items is ignored; an empty
/// expression is an empty list.
pub fn expand(expr: &str) -> Result<Vec<String>, HostlistError> {
    let err = |why: String| HostlistError {
        expr: expr.to_string(),
        why,
    };
    let mut out = Vec::new();
    for item in split_top(expr).map_err(err)? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        expand_item(item, &mut out).map_err(err)?;
        if out.len() > MAX_HOSTS {
            return Err(err(format!("expands to more than {MAX_HOSTS} names")));
        }
    }
    Ok(out)
}

/// Split at commas outside brackets.
fn split_top(expr: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '[' if depth > 0 => return Err("nested '['".into()),
            '[' => depth = 1,
            ']' if depth == 0 => return Err(format!("']' without '[' at {i}")),
            ']' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("'[' without ']'".into());
    }
    parts.push(&expr[start..]);
    Ok(parts)
}

/// Expand one item (text and bracket groups, no top-level comma).
fn expand_item(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    // Alternate literal text and bracket contents.
    let mut prefixes = vec![String::new()];
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']').ok_or("'[' without ']'")?;
        let text = &rest[..open];
        let choices = range_set(&rest[open + 1..close])?;
        if prefixes.len().saturating_mul(choices.len()) > MAX_HOSTS {
            return Err(format!("expands to more than {MAX_HOSTS} names"));
        }
        let mut next = Vec::with_capacity(prefixes.len() * choices.len());
        for p in &prefixes {
            for c in &choices {
                next.push(format!("{p}{text}{c}"));
            }
        }
        prefixes = next;
        rest = &rest[close + 1..];
    }
    if item.contains(char::is_whitespace) {
        return Err(format!("whitespace inside {item:?}"));
    }
    out.extend(prefixes.into_iter().map(|p| p + rest));
    Ok(())
}

/// `01-04,07` → `["01", "02", "03", "04", "07"]`. Numbers keep the width of
/// the lower bound (`08-10` → `08 09 10`; `8-10` → `8 9 10`).
fn range_set(body: &str) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    for r in body.split(',') {
        let r = r.trim();
        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) {
            return Err(format!("[{body}]: {r:?} is not a number or a range a-b"));
        }
        let width = lo.len();
        let (a, b): (u64, u64) = match (lo.parse(), hi.parse()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return Err(format!("[{body}]: {r:?} is out of range")),
        };
        if a > b {
            return Err(format!("[{body}]: range {r:?} runs backwards"));
        }
        if b - a >= MAX_HOSTS as u64 || v.len() + (b - a) as usize > MAX_HOSTS {
            return Err(format!("expands to more than {MAX_HOSTS} names"));
        }
        v.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(e: &str) -> Vec<String> {
        expand(e).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn plain_names_and_lists() {
        assert_eq!(x("node1"), ["node1"]);
        assert_eq!(x("a,b, c"), ["a", "b", "c"]);
        assert!(x("").is_empty());
        assert_eq!(x("host-1.example.org"), ["host-1.example.org"]);
    }

    #[test]
    fn ranges_padding_and_lists_in_brackets() {
        assert_eq!(
            x("node[01-04,07]"),
            ["node01", "node02", "node03", "node04", "node07"]
        );
        assert_eq!(x("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(x("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(x("n[007]"), ["n007"]);
        assert_eq!(x("n[1-2]-ib"), ["n1-ib", "n2-ib"]);
    }

    #[test]
    fn several_brackets_vary_leftmost_slowest() {
        assert_eq!(x("a[1-2]b"), ["a1b", "a2b"]);
        assert_eq!(x("a[1-2]b[3-4]"), ["a1b3", "a1b4", "a2b3", "a2b4"]);
        assert_eq!(
            x("r[1-2]n[01-02]x"),
            ["r1n01x", "r1n02x", "r2n01x", "r2n02x"]
        );
    }

    #[test]
    fn mixed_items() {
        assert_eq!(
            x("n[1-3],gpu[08-09],login"),
            ["n1", "n2", "n3", "gpu08", "gpu09", "login"]
        );
    }

    proptest::proptest! {
        /// Any text: an answer or an error, never a panic.
        #[test]
        fn never_panics(s in "[a-z0-9\\[\\],\\- ]{0,40}") {
            let _ = expand(&s);
        }

        /// Items built from known parts expand to exactly those names.
        #[test]
        fn built_expressions_expand_to_their_names(
            items in proptest::collection::vec(
                ("[a-z]{1,4}", proptest::collection::vec((0u64..200, 0u64..5, 1usize..4), 1..4)),
                1..4,
            )
        ) {
            let mut expr = Vec::new();
            let mut want = Vec::new();
            for (prefix, ranges) in &items {
                let mut parts = Vec::new();
                for &(lo, len, width) in ranges {
                    let hi = lo + len;
                    parts.push(format!("{lo:0width$}-{hi:0width$}"));
                    // The width of the lower bound as written.
                    let w = format!("{lo:0width$}").len();
                    want.extend((lo..=hi).map(|n| format!("{prefix}{n:0w$}")));
                }
                expr.push(format!("{prefix}[{}]", parts.join(",")));
            }
            let expr = expr.join(",");
            proptest::prop_assert_eq!(expand(&expr).unwrap(), want, "{}", expr);
        }
    }

    #[test]
    fn malformed_expressions_are_refused() {
        for bad in [
            "n[1-2",
            "n1-2]",
            "n[[1]]",
            "n[a-b]",
            "n[3-1]",
            "n[]",
            "n[1-]",
            "n[1-99999999999]",
            "a b",
        ] {
            assert!(expand(bad).is_err(), "{bad} accepted: {:?}", expand(bad));
        }
        let e = expand("n[3-1]").unwrap_err().to_string();
        assert!(e.contains("backwards") && e.contains("n[3-1]"), "{e}");
    }
}
