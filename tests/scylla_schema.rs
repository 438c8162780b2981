//! The always-on check of the ScyllaDB backend against `schema.cql` (no cluster needed): every
//! statement it prepares parses, names existing tables and columns, binds the full partition
//! key by equality, restricts clustering columns in key order, never uses ALLOW FILTERING, and
//! the Rust types it binds and reads pass the driver's own type checks against the column
//! types the schema declares. Lightweight transactions are never marked idempotent.

use std::collections::BTreeSet;

use scylla::frame::response::result::{
    CollectionType, ColumnSpec, ColumnType, NativeType, TableSpec,
};
use timeline::store::scylla::{SCHEMA_CQL, script, statements};
use timeline::testkit::cql::{self, CqlType, Schema, Statement};

fn schema() -> Schema {
    Schema::parse(SCHEMA_CQL).unwrap_or_else(|e| panic!("schema.cql: {e}"))
}

fn column_type(t: &CqlType) -> ColumnType<'static> {
    let native = |n: NativeType| ColumnType::Native(n);
    match t {
        CqlType::Native(n) => native(match n.as_str() {
            "text" => NativeType::Text,
            "ascii" => NativeType::Ascii,
            "bigint" => NativeType::BigInt,
            "int" => NativeType::Int,
            "smallint" => NativeType::SmallInt,
            "tinyint" => NativeType::TinyInt,
            "timestamp" => NativeType::Timestamp,
            "blob" => NativeType::Blob,
            "boolean" => NativeType::Boolean,
            "double" => NativeType::Double,
            "float" => NativeType::Float,
            "uuid" => NativeType::Uuid,
            "timeuuid" => NativeType::Timeuuid,
            other => panic!("type {other} has no mapping in this test"),
        }),
        CqlType::List(e) => ColumnType::Collection {
            frozen: false,
            typ: CollectionType::List(Box::new(column_type(e))),
        },
        CqlType::Set(e) => ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Set(Box::new(column_type(e))),
        },
        CqlType::Map(k, v) => ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Map(Box::new(column_type(k)), Box::new(column_type(v))),
        },
        CqlType::Tuple(ts) => ColumnType::Tuple(ts.iter().map(column_type).collect()),
        CqlType::Frozen(inner) => match column_type(inner) {
            ColumnType::Collection { typ, .. } => ColumnType::Collection { frozen: true, typ },
            other => other,
        },
    }
}

fn specs(table: &str, columns: &[(String, CqlType)]) -> Vec<ColumnSpec<'static>> {
    let table: &'static str = Box::leak(table.to_owned().into_boxed_str());
    columns
        .iter()
        .map(|(name, t)| {
            let name: &'static str = Box::leak(name.clone().into_boxed_str());
            ColumnSpec::borrowed(name, column_type(t), TableSpec::borrowed("timeline", table))
        })
        .collect()
}

#[test]
fn every_statement_fits_the_schema() {
    let schema = schema();
    let mut problems = Vec::new();
    for (name, text) in statements::STATEMENTS {
        match Statement::parse(text) {
            Err(e) => problems.push(format!("{name}: does not parse: {e}")),
            Ok(st) => {
                if let Err(found) = cql::check(&schema, &st) {
                    problems.extend(found.into_iter().map(|p| format!("{name}: {p}")));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The driver's type checks of every statement's Rust types against `schema`'s column types.
fn type_problems(schema: &Schema) -> Vec<String> {
    statements::type_check(|name| {
        let (_, text) = statements::STATEMENTS
            .iter()
            .find(|(n, _)| *n == name)
            .expect("listed");
        let st = Statement::parse(text).expect("parses");
        let typed = cql::check(schema, &st).expect("fits the schema");
        let results = if st.is_conditional() {
            // A lightweight transaction answers `[applied]` first.
            vec![(
                "[applied]".to_owned(),
                CqlType::Native("boolean".to_owned()),
            )]
        } else {
            typed.results
        };
        (specs(&st.table, &typed.binds), specs(&st.table, &results))
    })
}

#[test]
fn rust_bind_and_row_types_match_the_schema_types() {
    let problems = type_problems(&schema());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_type_check_catches_a_mismatch() {
    // The same machinery on a deliberately wrong schema: `members.joined_seq` as int.
    let wrong = SCHEMA_CQL.replace(
        "  joined_seq bigint,      -- first",
        "  joined_seq int,      -- first",
    );
    assert_ne!(wrong, SCHEMA_CQL, "the replaced line is in schema.cql");
    let problems = type_problems(&Schema::parse(&wrong).unwrap());
    for expected in [
        "insert_member: binds",
        "get_member: rows",
        "list_members: rows",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{expected} not caught: {problems:?}"
        );
    }
}

#[test]
fn only_non_conditional_statements_are_idempotent() {
    for (name, text) in statements::STATEMENTS {
        let st = Statement::parse(text).unwrap();
        let idempotent = statements::IDEMPOTENT
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i)
            .unwrap();
        assert_eq!(
            idempotent,
            !st.is_conditional(),
            "{name}: a lightweight transaction is never retried blindly; everything else is"
        );
    }
}

#[test]
fn every_table_is_used_and_every_key_choice_is_deliberate() {
    let schema = schema();
    let used: BTreeSet<String> = statements::STATEMENTS
        .iter()
        .map(|(_, text)| Statement::parse(text).unwrap().table)
        .collect();
    let tables: BTreeSet<String> = schema.tables.keys().cloned().collect();
    assert_eq!(used, tables, "statements and schema cover the same tables");
    let truncated: BTreeSet<String> = script::table_names(SCHEMA_CQL).into_iter().collect();
    assert_eq!(truncated, tables, "the tests' TRUNCATE reaches every table");
    for table in schema.tables.values() {
        assert!(
            table.options.contains_key("compaction"),
            "{}: compaction chosen per table",
            table.name
        );
    }
    // Retention lives in the schema: the TTL'd tables.
    assert_eq!(
        schema.tables["inbox"].options["default_time_to_live"],
        "1209600"
    );
    assert_eq!(
        schema.tables["idempotency"].options["default_time_to_live"],
        "86400"
    );
    assert!(schema.tables["inbox"].options["compaction"].contains("TimeWindowCompactionStrategy"));
    assert!(schema.replication.contains("NetworkTopologyStrategy"));
    // Both timelines descend in both key columns: ascending reads ascend in both.
    for t in ["messages", "inbox"] {
        assert!(
            schema.tables[t]
                .clustering
                .iter()
                .all(|(_, o)| *o == cql::Order::Desc),
            "{t}"
        );
    }
}
