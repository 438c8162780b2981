//! A parser for the subset of CQL this project writes (`schema.cql` and the backend's
//! statements), and the checks that keep the two in agreement: tables and columns exist, the
//! full partition key is bound by equality, clustering restrictions follow key order, no
//! `ALLOW FILTERING`, and every bind marker and result column gets its type from the schema.
//!
//! Crates looked at first (2026-12): `cqlparser` 0.1 (2021, "very early stage", no DELETE or
//! BATCH), `cql3-parser` 0.4 (wraps a tree-sitter C grammar and pulls tree-sitter, bigdecimal and
//! num-bigint into the build), `cqlite-core` (an SSTable reader). None is a lean, maintained fit,
//! so this small parser covers exactly the subset we write, with its own tests below; it rejects
//! what it does not understand rather than guessing.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlType {
    /// `text`, `bigint`, `int`, `timestamp`, `blob`, `boolean`, ...
    Native(String),
    List(Box<CqlType>),
    Set(Box<CqlType>),
    Map(Box<CqlType>, Box<CqlType>),
    Tuple(Vec<CqlType>),
    Frozen(Box<CqlType>),
}

impl fmt::Display for CqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CqlType::Native(n) => write!(f, "{n}"),
            CqlType::List(t) => write!(f, "list<{t}>"),
            CqlType::Set(t) => write!(f, "set<{t}>"),
            CqlType::Map(k, v) => write!(f, "map<{k}, {v}>"),
            CqlType::Tuple(ts) => {
                let parts: Vec<String> = ts.iter().map(ToString::to_string).collect();
                write!(f, "tuple<{}>", parts.join(", "))
            }
            CqlType::Frozen(t) => write!(f, "frozen<{t}>"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<(String, CqlType)>,
    pub static_columns: Vec<String>,
    pub partition_key: Vec<String>,
    pub clustering: Vec<(String, Order)>,
    pub options: BTreeMap<String, String>,
    /// Local secondary indexes (`CREATE INDEX ... ON t ((pk), column)`): indexed column names.
    pub local_indexes: Vec<String>,
}

impl Table {
    pub fn column_type(&self, name: &str) -> Option<&CqlType> {
        self.columns.iter().find(|(c, _)| c == name).map(|(_, t)| t)
    }
    fn is_primary_key(&self, name: &str) -> bool {
        self.partition_key.iter().any(|c| c == name)
            || self.clustering.iter().any(|(c, _)| c == name)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    pub keyspace: Option<String>,
    pub replication: String,
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Marker,
    Literal(String),
    Tuple(Vec<Term>),
}

/// `column op term` or `(c1, c2) op (t1, t2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub columns: Vec<String>,
    pub op: Op,
    pub term: Term,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Column(String),
    CountAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub kind: StatementKind,
    pub table: String,
    pub selectors: Vec<Selector>,
    /// INSERT columns, UPDATE SET columns, DELETE columns.
    pub columns: Vec<String>,
    pub relations: Vec<Relation>,
    /// `IF` conditions of an UPDATE (`IF EXISTS` counts as a condition without columns).
    pub conditions: Vec<Relation>,
    pub if_not_exists: bool,
    pub if_exists: bool,
    pub order_by: Vec<(String, Order)>,
    pub limit: bool,
    pub allow_filtering: bool,
    /// `USING TTL` / `USING TIMESTAMP` (upper case), bound or literal.
    pub using: Vec<String>,
    /// Every bind marker in textual order: its name and where its type comes from.
    pub markers: Vec<Marker>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Marker {
    Column(String),
    Ttl,
    Timestamp,
    Limit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

// --- tokens --------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(String),
    Sym(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Tok>, ParseError> {
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

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, ParseError> {
        Ok(Self {
            toks: tokenize(text)?,
            pos: 0,
        })
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }
    fn next(&mut self) -> Result<Tok, ParseError> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| ParseError("unexpected end of statement".into()))?;
        self.pos += 1;
        Ok(t)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn kw(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(ParseError(format!(
                "expected {kw}, found {:?}",
                self.peek()
            )))
        }
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }
    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn sym(&mut self, s: &str) -> Result<(), ParseError> {
        if self.eat_sym(s) {
            Ok(())
        } else {
            Err(ParseError(format!(
                "expected {s:?}, found {:?}",
                self.peek()
            )))
        }
    }
    fn ident(&mut self) -> Result<String, ParseError> {
        match self.next()? {
            Tok::Word(w) => Ok(w.to_ascii_lowercase()),
            t => Err(ParseError(format!("expected a name, found {t:?}"))),
        }
    }
    /// `name` or `keyspace.name`: the table name (the keyspace is the session's).
    fn table_name(&mut self) -> Result<(Option<String>, String), ParseError> {
        let first = self.ident()?;
        if self.eat_sym(".") {
            Ok((Some(first), self.ident()?))
        } else {
            Ok((None, first))
        }
    }
    fn cql_type(&mut self) -> Result<CqlType, ParseError> {
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
    fn option_value(&mut self) -> Result<String, ParseError> {
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
    fn term(&mut self) -> Result<Term, ParseError> {
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
    fn op(&mut self) -> Result<Op, ParseError> {
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
    fn relation(&mut self, markers: &mut Vec<Marker>) -> Result<Relation, ParseError> {
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
    fn relations(&mut self, markers: &mut Vec<Marker>) -> Result<Vec<Relation>, ParseError> {
        let mut out = vec![self.relation(markers)?];
        while self.eat_kw("AND") {
            out.push(self.relation(markers)?);
        }
        Ok(out)
    }
    fn using(&mut self, st: &mut Statement) -> Result<(), ParseError> {
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

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Word(w) | Tok::Num(w) => w.clone(),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Sym(s) => (*s).to_owned(),
    }
}

/// Splits a CQL script into statements (comments removed), each without its `;`.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            current.push(c);
            in_string = c != '\'';
        } else if c == '\'' {
            current.push(c);
            in_string = true;
        } else if c == '-' && chars.peek() == Some(&'-') {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            current.push('\n');
        } else if c == ';' {
            if !current.trim().is_empty() {
                out.push(current.trim().to_owned());
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

impl Schema {
    /// Parses `CREATE KEYSPACE`, `CREATE TABLE` and `CREATE INDEX` statements.
    pub fn parse(script: &str) -> Result<Schema, ParseError> {
        let mut schema = Schema::default();
        for text in split_statements(script) {
            let mut p = Parser::new(&text)?;
            p.kw("CREATE")?;
            if p.eat_kw("KEYSPACE") {
                if_not_exists(&mut p)?;
                schema.keyspace = Some(p.ident()?);
                p.kw("WITH")?;
                p.kw("replication")?;
                p.sym("=")?;
                schema.replication = p.option_value()?;
                while !p.done() {
                    p.next()?;
                }
            } else if p.eat_kw("TABLE") {
                let table =
                    parse_table(&mut p).map_err(|e| ParseError(format!("{e} in: {text}")))?;
                schema.tables.insert(table.name.clone(), table);
            } else if p.eat_kw("INDEX") {
                if_not_exists(&mut p)?;
                let _name = p.ident()?;
                p.kw("ON")?;
                let (_, table) = p.table_name()?;
                p.sym("(")?;
                p.sym("(")?;
                let mut pk = vec![p.ident()?];
                while p.eat_sym(",") {
                    pk.push(p.ident()?);
                }
                p.sym(")")?;
                p.sym(",")?;
                let column = p.ident()?;
                p.sym(")")?;
                let t = schema
                    .tables
                    .get_mut(&table)
                    .ok_or_else(|| ParseError(format!("index on unknown table {table}")))?;
                if pk != t.partition_key {
                    return Err(ParseError(format!(
                        "local index on {table} must name its partition key {:?}",
                        t.partition_key
                    )));
                }
                if t.column_type(&column).is_none() {
                    return Err(ParseError(format!(
                        "index on unknown column {table}.{column}"
                    )));
                }
                t.local_indexes.push(column);
            } else {
                return Err(ParseError(format!("unsupported statement: {text}")));
            }
        }
        Ok(schema)
    }
}

fn if_not_exists(p: &mut Parser) -> Result<(), ParseError> {
    p.kw("IF")?;
    p.kw("NOT")?;
    p.kw("EXISTS")
}

fn parse_table(p: &mut Parser) -> Result<Table, ParseError> {
    if_not_exists(p)?;
    let (_, name) = p.table_name()?;
    let mut table = Table {
        name,
        columns: Vec::new(),
        static_columns: Vec::new(),
        partition_key: Vec::new(),
        clustering: Vec::new(),
        options: BTreeMap::new(),
        local_indexes: Vec::new(),
    };
    p.sym("(")?;
    loop {
        if p.eat_kw("PRIMARY") {
            p.kw("KEY")?;
            p.sym("(")?;
            if p.eat_sym("(") {
                table.partition_key.push(p.ident()?);
                while p.eat_sym(",") {
                    table.partition_key.push(p.ident()?);
                }
                p.sym(")")?;
            } else {
                table.partition_key.push(p.ident()?);
            }
            while p.eat_sym(",") {
                table.clustering.push((p.ident()?, Order::Asc));
            }
            p.sym(")")?;
        } else {
            let column = p.ident()?;
            let typ = p.cql_type()?;
            if p.eat_kw("STATIC") {
                table.static_columns.push(column.clone());
            }
            if p.eat_kw("PRIMARY") {
                p.kw("KEY")?;
                table.partition_key.push(column.clone());
            }
            table.columns.push((column, typ));
        }
        if p.eat_sym(")") {
            break;
        }
        p.sym(",")?;
    }
    if p.eat_kw("WITH") {
        loop {
            if p.eat_kw("CLUSTERING") {
                p.kw("ORDER")?;
                p.kw("BY")?;
                p.sym("(")?;
                loop {
                    let column = p.ident()?;
                    let order = if p.eat_kw("DESC") {
                        Order::Desc
                    } else {
                        p.eat_kw("ASC");
                        Order::Asc
                    };
                    let slot = table
                        .clustering
                        .iter_mut()
                        .find(|(c, _)| *c == column)
                        .ok_or_else(|| {
                            ParseError(format!("{column} is not a clustering column"))
                        })?;
                    slot.1 = order;
                    if !p.eat_sym(",") {
                        break;
                    }
                }
                p.sym(")")?;
            } else {
                let key = p.ident()?;
                p.sym("=")?;
                let value = p.option_value()?;
                table.options.insert(key, value);
            }
            if !p.eat_kw("AND") {
                break;
            }
        }
    }
    if !p.done() {
        return Err(ParseError(format!(
            "trailing tokens after table {}",
            table.name
        )));
    }
    if table.partition_key.is_empty() {
        return Err(ParseError(format!(
            "table {} has no primary key",
            table.name
        )));
    }
    for key in table
        .partition_key
        .iter()
        .chain(table.clustering.iter().map(|(c, _)| c))
    {
        if table.column_type(key).is_none() {
            return Err(ParseError(format!("key column {key} is not declared")));
        }
    }
    Ok(table)
}

impl Statement {
    pub fn parse(text: &str) -> Result<Statement, ParseError> {
        let mut p = Parser::new(text)?;
        let mut st = Statement {
            kind: StatementKind::Select,
            table: String::new(),
            selectors: Vec::new(),
            columns: Vec::new(),
            relations: Vec::new(),
            conditions: Vec::new(),
            if_not_exists: false,
            if_exists: false,
            order_by: Vec::new(),
            limit: false,
            allow_filtering: false,
            using: Vec::new(),
            markers: Vec::new(),
        };
        if p.eat_kw("SELECT") {
            loop {
                if p.eat_kw("COUNT") {
                    p.sym("(")?;
                    p.sym("*")?;
                    p.sym(")")?;
                    st.selectors.push(Selector::CountAll);
                } else {
                    st.selectors.push(Selector::Column(p.ident()?));
                }
                if !p.eat_sym(",") {
                    break;
                }
            }
            p.kw("FROM")?;
            st.table = p.table_name()?.1;
            if p.eat_kw("WHERE") {
                st.relations = p.relations(&mut st.markers)?;
            }
            if p.eat_kw("ORDER") {
                p.kw("BY")?;
                loop {
                    let c = p.ident()?;
                    let o = if p.eat_kw("DESC") {
                        Order::Desc
                    } else {
                        p.eat_kw("ASC");
                        Order::Asc
                    };
                    st.order_by.push((c, o));
                    if !p.eat_sym(",") {
                        break;
                    }
                }
            }
            if p.eat_kw("LIMIT") {
                st.limit = true;
                if p.term()? == Term::Marker {
                    st.markers.push(Marker::Limit);
                }
            }
            if p.eat_kw("ALLOW") {
                p.kw("FILTERING")?;
                st.allow_filtering = true;
            }
        } else if p.eat_kw("INSERT") {
            st.kind = StatementKind::Insert;
            p.kw("INTO")?;
            st.table = p.table_name()?.1;
            p.sym("(")?;
            st.columns.push(p.ident()?);
            while p.eat_sym(",") {
                st.columns.push(p.ident()?);
            }
            p.sym(")")?;
            p.kw("VALUES")?;
            let Term::Tuple(values) = p.term()? else {
                return Err(ParseError("VALUES needs a tuple".into()));
            };
            if values.len() != st.columns.len() {
                return Err(ParseError(
                    "INSERT: columns and values differ in number".into(),
                ));
            }
            for (c, v) in st.columns.iter().zip(&values) {
                if *v == Term::Marker {
                    st.markers.push(Marker::Column(c.clone()));
                }
            }
            if p.eat_kw("IF") {
                p.kw("NOT")?;
                p.kw("EXISTS")?;
                st.if_not_exists = true;
            }
            p.using(&mut st)?;
        } else if p.eat_kw("UPDATE") {
            st.kind = StatementKind::Update;
            st.table = p.table_name()?.1;
            p.using(&mut st)?;
            p.kw("SET")?;
            loop {
                let c = p.ident()?;
                p.sym("=")?;
                if p.term()? == Term::Marker {
                    st.markers.push(Marker::Column(c.clone()));
                }
                st.columns.push(c);
                if !p.eat_sym(",") {
                    break;
                }
            }
            p.kw("WHERE")?;
            st.relations = p.relations(&mut st.markers)?;
            if p.eat_kw("IF") {
                if p.eat_kw("EXISTS") {
                    st.if_exists = true;
                } else {
                    st.conditions = p.relations(&mut st.markers)?;
                }
            }
        } else if p.eat_kw("DELETE") {
            st.kind = StatementKind::Delete;
            if !p.is_kw("FROM") {
                st.columns.push(p.ident()?);
                while p.eat_sym(",") {
                    st.columns.push(p.ident()?);
                }
            }
            p.kw("FROM")?;
            st.table = p.table_name()?.1;
            p.using(&mut st)?;
            p.kw("WHERE")?;
            st.relations = p.relations(&mut st.markers)?;
            if p.eat_kw("IF") {
                p.kw("EXISTS")?;
                st.if_exists = true;
            }
        } else {
            return Err(ParseError(format!("unsupported statement: {text}")));
        }
        if !p.done() {
            return Err(ParseError(format!("unexpected {:?} in: {text}", p.peek())));
        }
        Ok(st)
    }

    /// Whether the statement is a lightweight transaction (Paxos; never idempotent).
    pub fn is_conditional(&self) -> bool {
        self.if_not_exists || self.if_exists || !self.conditions.is_empty()
    }
}

/// The type of each bind marker, in order, and of each result column (`SELECT` only).
#[derive(Debug, Clone, PartialEq)]
pub struct Typed {
    pub binds: Vec<(String, CqlType)>,
    pub results: Vec<(String, CqlType)>,
}

/// Checks `st` against `schema` and types its markers and results; every problem is listed.
pub fn check(schema: &Schema, st: &Statement) -> Result<Typed, Vec<String>> {
    let mut problems = Vec::new();
    let Some(table) = schema.tables.get(&st.table) else {
        return Err(vec![format!("unknown table {}", st.table)]);
    };
    let column = |name: &str, problems: &mut Vec<String>| -> Option<CqlType> {
        let t = table.column_type(name).cloned();
        if t.is_none() {
            problems.push(format!("unknown column {}.{name}", table.name));
        }
        t
    };
    if st.allow_filtering {
        problems.push("ALLOW FILTERING".into());
    }
    for name in &st.columns {
        column(name, &mut problems);
    }
    for rel in st.relations.iter().chain(&st.conditions) {
        for name in &rel.columns {
            column(name, &mut problems);
        }
    }

    // WHERE: the full partition key by equality, then clustering columns in key order: a run of
    // equalities, then at most one column (or one tuple of the next columns) with a range.
    let restricted = |name: &str| {
        st.relations
            .iter()
            .find(|r| r.columns.iter().any(|c| c == name))
    };
    let statics_only = st.kind != StatementKind::Select
        && !st.columns.is_empty()
        && st.columns.iter().all(|c| table.static_columns.contains(c));
    for key in &table.partition_key {
        match restricted(key) {
            Some(r) if r.op == Op::Eq && r.columns.len() == 1 => {}
            Some(_) => problems.push(format!("partition key column {key} must be bound by =")),
            None if st.kind == StatementKind::Insert => {}
            None => problems.push(format!("partition key column {key} is not restricted")),
        }
    }
    let mut index_used = false;
    for rel in &st.relations {
        let first = &rel.columns[0];
        if table.partition_key.contains(first) {
            continue;
        }
        if table.local_indexes.contains(first) && rel.op == Op::Eq && rel.columns.len() == 1 {
            if st.kind != StatementKind::Select {
                problems.push(format!("{first} is indexed: only a SELECT may restrict it"));
            }
            index_used = true;
            continue;
        }
        if !table.clustering.iter().any(|(c, _)| c == first) {
            problems.push(format!(
                "{first} is neither a key column nor locally indexed"
            ));
        }
    }
    if !index_used {
        let mut ended = false; // a range (or a gap) ends the usable prefix
        for (name, _) in &table.clustering {
            match restricted(name) {
                None => ended = true,
                Some(_) if ended => problems.push(format!(
                    "clustering column {name} restricted out of key order"
                )),
                Some(r) => {
                    if r.columns.len() > 1 {
                        let at = table
                            .clustering
                            .iter()
                            .position(|(c, _)| c == &r.columns[0]);
                        let expected: Vec<&String> = at
                            .map(|i| table.clustering[i..].iter().map(|(c, _)| c).collect())
                            .unwrap_or_default();
                        if expected.len() < r.columns.len()
                            || r.columns.iter().zip(&expected).any(|(a, b)| a != *b)
                        {
                            problems.push(format!(
                                "tuple relation {:?} must follow clustering order",
                                r.columns
                            ));
                        }
                        if r.columns.last() == Some(name) {
                            ended = r.op != Op::Eq;
                        }
                    } else if r.op != Op::Eq {
                        ended = true;
                    }
                }
            }
        }
    }
    match st.kind {
        StatementKind::Insert => {
            for key in table
                .partition_key
                .iter()
                .chain(table.clustering.iter().map(|(c, _)| c))
            {
                if !st.columns.contains(key) {
                    problems.push(format!("INSERT lacks primary key column {key}"));
                }
            }
        }
        StatementKind::Update if !statics_only => {
            for (key, _) in &table.clustering {
                if !matches!(restricted(key), Some(r) if r.op == Op::Eq && r.columns.len() == 1) {
                    problems.push(format!("UPDATE must bind clustering column {key} by ="));
                }
            }
        }
        StatementKind::Update | StatementKind::Select | StatementKind::Delete => {}
    }
    for c in &st.columns {
        if table.is_primary_key(c) && st.kind != StatementKind::Insert {
            problems.push(format!("{c} is part of the primary key and cannot be set"));
        }
    }
    // ORDER BY: the first clustering column, to reverse the whole clustering order.
    if let Some((c, _)) = st.order_by.first()
        && (st.order_by.len() > 1 || table.clustering.first().map(|(f, _)| f) != Some(c))
    {
        problems.push(format!(
            "ORDER BY must name only {:?}",
            table.clustering.first()
        ));
    }

    let mut typed = Typed {
        binds: Vec::new(),
        results: Vec::new(),
    };
    for marker in &st.markers {
        match marker {
            Marker::Column(c) => {
                if let Some(t) = column(c, &mut problems) {
                    typed.binds.push((c.clone(), t));
                }
            }
            Marker::Ttl => typed
                .binds
                .push(("[ttl]".into(), CqlType::Native("int".into()))),
            Marker::Timestamp => typed
                .binds
                .push(("[timestamp]".into(), CqlType::Native("bigint".into()))),
            Marker::Limit => typed
                .binds
                .push(("[limit]".into(), CqlType::Native("int".into()))),
        }
    }
    for s in &st.selectors {
        match s {
            Selector::Column(c) => {
                if let Some(t) = column(c, &mut problems) {
                    typed.results.push((c.clone(), t));
                }
            }
            Selector::CountAll => typed
                .results
                .push(("count".into(), CqlType::Native("bigint".into()))),
        }
    }
    if problems.is_empty() {
        Ok(typed)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = "
        CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'NetworkTopologyStrategy', 'replication_factor': 3};
        -- a comment; with a semicolon
        CREATE TABLE IF NOT EXISTS ks.t (
          p text, b bigint, c1 bigint, c2 bigint, v blob, s bigint STATIC,
          l list<frozen<tuple<bigint, text>>>, m map<text, bigint>,
          PRIMARY KEY ((p, b), c1, c2)
        ) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC) AND default_time_to_live = 60
          AND compaction = {'class': 'TimeWindowCompactionStrategy'};
        CREATE TABLE IF NOT EXISTS ks.u (k text PRIMARY KEY, mode text);
        CREATE TABLE IF NOT EXISTS ks.w (k text, c text, mode text, PRIMARY KEY ((k), c));
        CREATE INDEX IF NOT EXISTS w_by_mode ON ks.w ((k), mode);
    ";

    fn schema() -> Schema {
        Schema::parse(SCHEMA).unwrap()
    }

    fn problems(cql: &str) -> Vec<String> {
        check(&schema(), &Statement::parse(cql).unwrap())
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn parses_tables_keys_order_types_and_options() {
        let s = schema();
        assert_eq!(s.keyspace.as_deref(), Some("ks"));
        assert!(s.replication.contains("NetworkTopologyStrategy"));
        let t = &s.tables["t"];
        assert_eq!(t.partition_key, ["p", "b"]);
        assert_eq!(
            t.clustering,
            [
                ("c1".to_owned(), Order::Desc),
                ("c2".to_owned(), Order::Asc)
            ]
        );
        assert_eq!(t.static_columns, ["s"]);
        assert_eq!(t.options["default_time_to_live"], "60");
        assert_eq!(
            t.column_type("l").unwrap().to_string(),
            "list<frozen<tuple<bigint, text>>>"
        );
        assert_eq!(s.tables["u"].partition_key, ["k"]);
        assert_eq!(s.tables["w"].local_indexes, ["mode"]);
    }

    #[test]
    fn rejects_malformed_schemas() {
        for bad in [
            "CREATE TABLE IF NOT EXISTS x (a text)",
            "CREATE TABLE IF NOT EXISTS x (a text, PRIMARY KEY (b))",
            "CREATE TABLE IF NOT EXISTS x (a wat, PRIMARY KEY (a))",
            "CREATE TABLE IF NOT EXISTS x (a text, PRIMARY KEY (a)) WITH CLUSTERING ORDER BY (z DESC)",
            "DROP TABLE x",
        ] {
            assert!(Schema::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn good_statements_pass_with_typed_markers() {
        let st = Statement::parse(
            "SELECT c1, v, COUNT(*) FROM t WHERE p = ? AND b = ? AND (c1, c2) > (?, ?) LIMIT ?",
        )
        .unwrap();
        let typed = check(&schema(), &st).unwrap();
        let binds: Vec<String> = typed
            .binds
            .iter()
            .map(|(n, t)| format!("{n}:{t}"))
            .collect();
        assert_eq!(
            binds,
            [
                "p:text",
                "b:bigint",
                "c1:bigint",
                "c2:bigint",
                "[limit]:int"
            ]
        );
        let results: Vec<String> = typed
            .results
            .iter()
            .map(|(n, t)| format!("{n}:{t}"))
            .collect();
        assert_eq!(results, ["c1:bigint", "v:blob", "count:bigint"]);

        for ok in [
            "SELECT v FROM t WHERE p = ? AND b = ? AND c1 >= ? AND c1 <= ? ORDER BY c1 ASC LIMIT ?",
            "SELECT v FROM t WHERE p = ? AND b = ? AND c1 = ? AND c2 > ?",
            "INSERT INTO t (p, b, c1, c2, v) VALUES (?, ?, ?, ?, ?) USING TTL ?",
            "UPDATE t USING TIMESTAMP ? SET v = ? WHERE p = ? AND b = ? AND c1 = ? AND c2 = ?",
            "UPDATE t USING TIMESTAMP ? SET s = ? WHERE p = ? AND b = ?",
            "DELETE FROM t WHERE p = ? AND b = ?",
            "DELETE v FROM t WHERE p = ? AND b = ? AND c1 = ? AND c2 = ?",
            "INSERT INTO u (k, mode) VALUES (?, 'hot') IF NOT EXISTS",
            "SELECT c, mode FROM w WHERE k = ? AND mode = 'hot'",
        ] {
            assert!(problems(ok).is_empty(), "{ok}: {:?}", problems(ok));
        }
        assert!(
            Statement::parse("INSERT INTO u (k, mode) VALUES (?, ?) IF NOT EXISTS")
                .unwrap()
                .is_conditional()
        );
    }

    #[test]
    fn each_rule_catches_its_violation() {
        let cases = [
            ("SELECT v FROM nope WHERE p = ?", "unknown table"),
            ("SELECT nope FROM t WHERE p = ? AND b = ?", "unknown column"),
            (
                "SELECT v FROM t WHERE p = ?",
                "partition key column b is not restricted",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b > ?",
                "must be bound by =",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b = ? AND c2 = ?",
                "out of key order",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b = ? AND c1 > ? AND c2 = ?",
                "out of key order",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b = ? AND (c2, c1) > (?, ?)",
                "clustering order",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b = ? ALLOW FILTERING",
                "ALLOW FILTERING",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b = ? AND v = ?",
                "neither a key column",
            ),
            (
                "SELECT v FROM t WHERE p = ? AND b = ? ORDER BY c2 DESC",
                "ORDER BY",
            ),
            (
                "INSERT INTO t (p, b, c1, v) VALUES (?, ?, ?, ?)",
                "lacks primary key column c2",
            ),
            (
                "UPDATE t SET v = ? WHERE p = ? AND b = ? AND c1 = ?",
                "clustering column c2",
            ),
            (
                "UPDATE t SET c1 = ? WHERE p = ? AND b = ? AND c1 = ? AND c2 = ?",
                "primary key",
            ),
            (
                "UPDATE w SET c = ? WHERE k = ? AND mode = ?",
                "only a SELECT",
            ),
        ];
        for (cql, expected) in cases {
            let found = problems(cql);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{cql}: expected {expected:?}, got {found:?}"
            );
        }
    }

    #[test]
    fn unparseable_statements_are_errors_not_guesses() {
        for bad in [
            "SELECT FROM t",
            "INSERT INTO t (a, b) VALUES (?)",
            "UPDATE t SET WHERE p = ?",
            "SELECT v FROM t WHERE p = ? trailing",
            "TRUNCATE t",
            "SELECT 'unterminated FROM t",
        ] {
            assert!(Statement::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_keeps_statements_and_drops_comments() {
        let parts = split_statements("-- x; y\nA 1;\nB 'a;b--' -- c\n;");
        assert_eq!(parts, ["A 1", "B 'a;b--'"]);
    }
}
