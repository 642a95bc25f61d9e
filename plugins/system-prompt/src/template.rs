//! The template language: `[type:name]` inserts a variable, `[if
//! type:name]…[else]…[endif]` (and `[if !type:name]`) keeps text only when
//! a variable has a value. Nothing here fails: an unknown or empty variable
//! inserts nothing, and a tag that does not fit (a stray `[endif]`, an
//! unclosed `[if]`) stays in the text as written, so a typo shows up in the
//! prompt instead of silently eating it.

/// Looks variables up: `None` = no value.
pub trait Lookup {
    /// The value of `kind:name`.
    fn get(&mut self, kind: &str, name: &str) -> Option<String>;
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Text(&'a str),
    Var(&'a str, &'a str),
    If { negate: bool, kind: &'a str, name: &'a str, raw: &'a str },
    Else(&'a str),
    EndIf(&'a str),
}

/// `kind:name` with `kind` a word.
fn split_var(s: &str) -> Option<(&str, &str)> {
    let (kind, name) = s.split_once(':')?;
    let word = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (word && !name.is_empty() && !name.contains(['[', ']'])).then_some((kind, name))
}

fn tokenize(t: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = t;
    let mut text_start = 0usize;
    let mut pos = 0usize;
    while let Some(open) = rest.find('[') {
        let at = pos + open;
        let Some(close) = t[at..].find(']') else { break };
        let raw = &t[at..at + close + 1];
        let inner = &raw[1..raw.len() - 1];
        let token = if inner == "else" {
            Some(Token::Else(raw))
        } else if inner == "endif" {
            Some(Token::EndIf(raw))
        } else if let Some(cond) = inner.strip_prefix("if ") {
            let cond = cond.trim();
            let (negate, cond) = match cond.strip_prefix('!') {
                Some(c) => (true, c.trim()),
                None => (false, cond),
            };
            split_var(cond).map(|(kind, name)| Token::If { negate, kind, name, raw })
        } else {
            split_var(inner).map(|(k, n)| Token::Var(k, n))
        };
        match token {
            Some(tok) => {
                if text_start < at {
                    out.push(Token::Text(&t[text_start..at]));
                }
                out.push(tok);
                pos = at + raw.len();
                text_start = pos;
            }
            // Not a tag: keep scanning after this bracket.
            None => pos = at + 1,
        }
        rest = &t[pos..];
    }
    if text_start < t.len() {
        out.push(Token::Text(&t[text_start..]));
    }
    out
}

/// Render `template` with `vars`.
pub fn render(template: &str, vars: &mut dyn Lookup) -> String {
    let tokens = tokenize(template);
    let mut out = String::with_capacity(template.len());
    let mut i = 0;
    render_block(&tokens, &mut i, vars, &mut out, true, 0);
    out
}

/// Render tokens from `*i` until an `[else]`/`[endif]` at this depth (left
/// unconsumed) or the end. `emit = false` walks a branch not taken.
fn render_block(
    tokens: &[Token<'_>],
    i: &mut usize,
    vars: &mut dyn Lookup,
    out: &mut String,
    emit: bool,
    depth: usize,
) {
    while let Some(tok) = tokens.get(*i) {
        match tok {
            Token::Text(s) => {
                if emit {
                    out.push_str(s);
                }
                *i += 1;
            }
            Token::Var(kind, name) => {
                if emit {
                    if let Some(v) = vars.get(kind, name) {
                        out.push_str(&v);
                    }
                }
                *i += 1;
            }
            Token::Else(raw) | Token::EndIf(raw) => {
                if depth > 0 {
                    return;
                }
                // A stray closing tag at top level: literal.
                if emit {
                    out.push_str(raw);
                }
                *i += 1;
            }
            Token::If { negate, kind, name, raw } => {
                if !closes(tokens, *i) {
                    // Unclosed: the tag is literal, what follows renders.
                    if emit {
                        out.push_str(raw);
                    }
                    *i += 1;
                    continue;
                }
                *i += 1;
                let holds = emit && (vars.get(kind, name).is_some_and(|v| !v.is_empty()) != *negate);
                render_block(tokens, i, vars, out, emit && holds, depth + 1);
                if let Some(Token::Else(_)) = tokens.get(*i) {
                    *i += 1;
                    render_block(tokens, i, vars, out, emit && !holds, depth + 1);
                }
                if let Some(Token::EndIf(_)) = tokens.get(*i) {
                    *i += 1;
                }
            }
        }
    }
}

/// Whether the `[if]` at `at` has its `[endif]`.
fn closes(tokens: &[Token<'_>], at: usize) -> bool {
    let mut depth = 0usize;
    for tok in &tokens[at..] {
        match tok {
            Token::If { .. } => depth += 1,
            Token::EndIf(_) => {
                depth -= 1;
                if depth == 0 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Lookup for Map {
        fn get(&mut self, kind: &str, name: &str) -> Option<String> {
            self.0.get(format!("{kind}:{name}").as_str()).map(|s| (*s).to_owned())
        }
    }

    fn r(t: &str) -> String {
        let mut m =
            Map(HashMap::from([("prompt:cwd", "/w"), ("system:os", "linux"), ("file:A.md", "rules")]));
        render(t, &mut m)
    }

    #[test]
    fn variables_and_unknowns() {
        assert_eq!(r("cwd=[prompt:cwd] x=[prompt:nope]."), "cwd=/w x=.");
        assert_eq!(r("[not a tag] [a:] [x]"), "[not a tag] [a:] [x]");
    }

    #[test]
    fn conditionals_nest_and_negate() {
        assert_eq!(r("[if file:A.md]A: [file:A.md][else]none[endif]"), "A: rules");
        assert_eq!(r("[if file:B.md]B[else]none[endif]"), "none");
        assert_eq!(r("[if !file:B.md]no B[endif]"), "no B");
        assert_eq!(r("[if system:os]os [if prompt:x]x[else]no x[endif][endif]"), "os no x");
    }

    #[test]
    fn stray_and_unclosed_tags_stay_literal() {
        assert_eq!(r("a[endif]b[else]c"), "a[endif]b[else]c");
        assert_eq!(r("[if system:os]open"), "[if system:os]open");
    }
}
