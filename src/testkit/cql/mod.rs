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

mod check;
mod lexer;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

pub use self::check::{Typed, check};
use self::lexer::Parser;
use crate::store::scylla::script::split_statements;

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
