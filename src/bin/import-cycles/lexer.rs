//! Rust source reduced to the tokens that can name a module: identifiers,
//! `::` and punctuation, each with its line. Comments, string, byte-string,
//! raw-string and char literals are dropped here, so that a path written in
//! a doc comment or a string (`"crate::x"`) never becomes an import.

/// One token of the reduced source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword (`$crate` arrives as `crate`).
    Ident(String),
    /// `::`
    PathSep,
    /// Any other single character that is not whitespace.
    Punct(char),
}

/// A token and the 1-based line it starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
}

/// The tokens of `source` (see the module header for what is dropped).
pub fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut lexer = Lexer {
        chars: &chars,
        at: 0,
        line: 1,
        out: Vec::new(),
    };
    lexer.run();
    lexer.out
}

struct Lexer<'a> {
    chars: &'a [char],
    at: usize,
    line: usize,
    out: Vec<Token>,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    /// Moves past one character, counting lines.
    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.at += 1;
    }

    fn emit(&mut self, tok: Tok, line: usize) {
        self.out.push(Token { tok, line });
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            let line = self.line;
            match c {
                '/' if self.peek(1) == Some('/') => self.line_comment(),
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => self.string(),
                '\'' => self.quote(),
                ':' if self.peek(1) == Some(':') => {
                    self.at += 2;
                    self.emit(Tok::PathSep, line);
                }
                c if c.is_alphabetic() || c == '_' => self.word(),
                c if c.is_ascii_digit() => self.number(),
                // `$crate` in a macro is the crate; other `$x` are metavariables.
                '$' => self.bump(),
                c if c.is_whitespace() => self.bump(),
                c => {
                    self.bump();
                    self.emit(Tok::Punct(c), line);
                }
            }
        }
    }

    fn line_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.bump();
        }
    }

    /// `/* */`, nested as Rust nests them.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while self.peek(0).is_some() {
            if self.peek(0) == Some('/') && self.peek(1) == Some('*') {
                depth += 1;
                self.at += 2;
            } else if self.peek(0) == Some('*') && self.peek(1) == Some('/') {
                depth -= 1;
                self.at += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// A `"..."` literal, the opening quote under the cursor.
    fn string(&mut self) {
        self.bump();
        while let Some(c) = self.peek(0) {
            self.bump();
            match c {
                '\\' => self.bump(),
                '"' => return,
                _ => {}
            }
        }
    }

    /// `r"..."`, `r#"..."#`: the cursor on the first `#` or the quote.
    fn raw_string(&mut self) {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            hashes += 1;
            self.bump();
        }
        self.bump(); // the opening quote
        while self.peek(0).is_some() {
            if self.peek(0) == Some('"') && (1..=hashes).all(|k| self.peek(k) == Some('#')) {
                self.at += 1 + hashes;
                return;
            }
            self.bump();
        }
    }

    /// A char literal (`'x'`, `'\n'`, `'\u{..}'`) is skipped; a lifetime or
    /// label (`'a`) loses its quote and goes on as an identifier.
    fn quote(&mut self) {
        if self.peek(1) == Some('\\') {
            self.at += 2;
            while self.peek(0).is_some_and(|c| c != '\'') {
                self.bump();
            }
            self.bump();
        } else if self.peek(2) == Some('\'') {
            self.at += 3;
        } else {
            self.bump();
        }
    }

    fn word(&mut self) {
        let line = self.line;
        let start = self.at;
        while self
            .peek(0)
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            self.at += 1;
        }
        let word: String = self.chars[start..self.at].iter().collect();
        let next = self.peek(0);
        match (word.as_str(), next) {
            ("r" | "br" | "cr", Some('"')) => self.raw_string(),
            // `r#"..."#`, not the raw identifier `r#type`.
            ("r" | "br" | "cr", Some('#')) if self.raw_string_follows() => self.raw_string(),
            ("b" | "c", Some('"')) => self.string(),
            ("b", Some('\'')) => self.quote(),
            _ => self.emit(Tok::Ident(word), line),
        }
    }

    fn raw_string_follows(&self) -> bool {
        let mut k = 0;
        while self.peek(k) == Some('#') {
            k += 1;
        }
        self.peek(k) == Some('"')
    }

    fn number(&mut self) {
        while self
            .peek(0)
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(source: &str) -> Vec<String> {
        tokens(source)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_and_literals_name_nothing() {
        let source = r###"
            // use crate::a;
            /* crate::b /* nested crate::c */ still comment */
            let s = "crate::d \" crate::e";
            let r = r#"crate::f "quoted" "#;
            let b = b"crate::g";
            let c = '"'; let q = '\''; let u = '\u{7b}';
            fn f<'a>(x: &'a str) {}
            real
        "###;
        assert_eq!(
            idents(source),
            [
                "let", "s", "let", "r", "let", "b", "let", "c", "let", "q", "let", "u", "fn", "f",
                "a", "x", "a", "str", "real"
            ]
        );
    }

    #[test]
    fn paths_keep_their_lines() {
        let found = tokens("use a;\n\n$crate::x::y");
        assert_eq!(found[3].tok, Tok::Ident("crate".into()));
        assert_eq!(found[3].line, 3);
        assert_eq!(found[4].tok, Tok::PathSep);
    }

    #[test]
    fn raw_identifiers_are_not_raw_strings() {
        assert_eq!(idents("r#type; crate"), ["r", "type", "crate"]);
    }
}
