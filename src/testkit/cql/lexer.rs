//! Tokens of the CQL subset, and the cursor over them that the statement parsers use.

use super::*;

// --- tokens --------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

pub(super) fn tokenize(text: &str) -> Result<Vec<Tok>, ParseError> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else if c == '"' {
            // A quoted identifier (`"[applied]"` never appears in our statements).
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(ParseError("unterminated string".into())),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(s));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let sym = match two.as_str() {
                ">=" => Some(">="),
                "<=" => Some("<="),
                _ => None,
            };
            if let Some(sym) = sym {
                out.push(Tok::Sym(sym));
                i += 2;
                continue;
            }
            let sym = match c {
                '(' => "(",
                ')' => ")",
                ',' => ",",
                ';' => ";",
                '<' => "<",
                '>' => ">",
                '=' => "=",
                '?' => "?",
                '.' => ".",
                '{' => "{",
                '}' => "}",
                ':' => ":",
                '*' => "*",
                _ => return Err(ParseError(format!("unexpected character {c:?}"))),
            };
            out.push(Tok::Sym(sym));
            i += 1;
        }
    }
    Ok(out)
}

pub(super) struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    pub(super) fn new(text: &str) -> Result<Self, ParseError> {
        Ok(Self {
            toks: tokenize(text)?,
            pos: 0,
        })
    }
    pub(super) fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    pub(super) fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }
    pub(super) fn next(&mut self) -> Result<Tok, ParseError> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| ParseError("unexpected end of statement".into()))?;
        self.pos += 1;
        Ok(t)
    }
    pub(super) fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    pub(super) fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    pub(super) fn kw(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(ParseError(format!(
                "expected {kw}, found {:?}",
                self.peek()
            )))
        }
    }
    pub(super) fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }
    pub(super) fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    pub(super) fn sym(&mut self, s: &str) -> Result<(), ParseError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(ParseError(format!(
                "expected {s:?}, found {:?}",
                self.peek()
            )))
        }
    }
    pub(super) fn ident(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Word(w) => Ok(w.to_ascii_lowercase()),
            t => Err(ParseError(format!("expected a name, found {t:?}"))),
        }
    }
    /// `name` or `keyspace.name`: the table name (the keyspace is the session's).
    pub(super) fn table_name(&mut self) -> Result<(Option<String>, String), ParseError> {
        let first = self.ident()?;
        if self.eat_sym(".") {
            Ok((Some(first), self.ident()?))
        } else {
            Ok((None, first))
        }
    }
    pub(super) fn cql_type(&mut self) -> Result<CqlType, ParseError> {
        let name = self.ident()?;
        let generic = |p: &mut Parser, n: usize| -> Result<Vec<CqlType>, ParseError> {
            p.sym("<")?;
            let mut args = vec![p.cql_type()?];
            while p.eat_sym(",") {
                args.push(p.cql_type()?);
            }
            p.sym(">")?;
            if n > 0 && args.len() != n {
                return Err(ParseError(format!(
                    "wrong number of type arguments for {name}"
                )));
            }
            Ok(args)
        };
        Ok(match name.as_str() {
            "list" => CqlType::List(Box::new(generic(self, 1)?.remove(0))),
            "set" => CqlType::Set(Box::new(generic(self, 1)?.remove(0))),
            "frozen" => CqlType::Frozen(Box::new(generic(self, 1)?.remove(0))),
            "map" => {
                let mut a = generic(self, 2)?;
                let v = a.remove(1);
                CqlType::Map(Box::new(a.remove(0)), Box::new(v))
            }
            "tuple" => CqlType::Tuple(generic(self, 0)?),
            "text" | "varchar" | "ascii" | "bigint" | "int" | "smallint" | "tinyint"
            | "timestamp" | "blob" | "boolean" | "uuid" | "timeuuid" | "double" | "float"
            | "counter" | "date" | "time" | "inet" | "varint" | "decimal" | "duration" => {
                CqlType::Native(if name == "varchar" {
                    "text".into()
                } else {
                    name
                })
            }
            other => return Err(ParseError(format!("unknown type {other}"))),
        })
    }
    /// Skips a balanced `{...}`, `(...)`, literal or name; returns its text.
    pub(super) fn option_value(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Sym("{") => {
                let mut depth = 1;
                let mut text = String::from("{");
                while depth > 0 {
                    let t = self.next()?;
                    match &t {
                        Tok::Sym("{") => depth += 1,
                        Tok::Sym("}") => depth -= 1,
                        _ => {}
                    }
                    text.push_str(&tok_text(&t));
                    text.push(' ');
                }
                Ok(text)
            }
            t => Ok(tok_text(&t)),
        }
    }
    pub(super) fn term(&mut self) -> Result<Term, ParseError> {
        match self.next()? {
            Tok::Sym("?") => Ok(Term::Marker),
            Tok::Str(s) => Ok(Term::Literal(format!("'{s}'"))),
            Tok::Num(n) => Ok(Term::Literal(n)),
            Tok::Word(w) if w.eq_ignore_ascii_case("true") || w.eq_ignore_ascii_case("false") => {
                Ok(Term::Literal(w))
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("null") => Ok(Term::Literal(w)),
            Tok::Sym("(") => {
                let mut ts = vec![self.term()?];
                while self.eat_sym(",") {
                    ts.push(self.term()?);
                }
                self.sym(")")?;
                Ok(Term::Tuple(ts))
            }
            t => Err(ParseError(format!("expected a value, found {t:?}"))),
        }
    }
    pub(super) fn op(&mut self) -> Result<Op, ParseError> {
        match self.next()? {
            Tok::Sym("=") => Ok(Op::Eq),
            Tok::Sym("<") => Ok(Op::Lt),
            Tok::Sym("<=") => Ok(Op::Le),
            Tok::Sym(">") => Ok(Op::Gt),
            Tok::Sym(">=") => Ok(Op::Ge),
            Tok::Word(w) if w.eq_ignore_ascii_case("in") => Ok(Op::In),
            t => Err(ParseError(format!("expected an operator, found {t:?}"))),
        }
    }
    pub(super) fn relation(&mut self, markers: &mut Vec<Marker>) -> Result<Relation, ParseError> {
        let columns = if self.eat_sym("(") {
            let mut cs = vec![self.ident()?];
            while self.eat_sym(",") {
                cs.push(self.ident()?);
            }
            self.sym(")")?;
            cs
        } else {
            vec![self.ident()?]
        };
        let op = self.op()?;
        let term = self.term()?;
        match &term {
            Term::Marker => {
                if columns.len() != 1 {
                    return Err(ParseError(
                        "a tuple relation needs a tuple of values".into(),
                    ));
                }
                markers.push(Marker::Column(columns[0].clone()));
            }
            Term::Tuple(ts) => {
                if ts.len() != columns.len() {
                    return Err(ParseError("tuple relation arity differs".into()));
                }
                for (c, t) in columns.iter().zip(ts) {
                    if *t == Term::Marker {
                        markers.push(Marker::Column(c.clone()));
                    }
                }
            }
            Term::Literal(_) => {}
        }
        Ok(Relation { columns, op, term })
    }
    pub(super) fn relations(
        &mut self,
        markers: &mut Vec<Marker>,
    ) -> Result<Vec<Relation>, ParseError> {
        let mut out = vec![self.relation(markers)?];
        while self.eat_kw("AND") {
            out.push(self.relation(markers)?);
        }
        Ok(out)
    }
    pub(super) fn using(&mut self, st: &mut Statement) -> Result<(), ParseError> {
        if !self.eat_kw("USING") {
            return Ok(());
        }
        loop {
            let what = self.ident()?.to_ascii_uppercase();
            let marker = match what.as_str() {
                "TTL" => Marker::Ttl,
                "TIMESTAMP" => Marker::Timestamp,
                _ => return Err(ParseError(format!("unknown USING {what}"))),
            };
            if self.term()? == Term::Marker {
                st.markers.push(marker);
            }
            st.using.push(what);
            if !self.eat_kw("AND") {
                return Ok(());
            }
        }
    }
}

pub(super) fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Word(w) | Tok::Num(w) => w.clone(),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Sym(s) => (*s).to_owned(),
    }
}
