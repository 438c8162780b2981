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
    // History reads messages newest first; Sync reads the inbox oldest first: each table is
    // clustered the way it is mostly read.
    let order = |t: &str| -> Vec<cql::Order> {
        schema.tables[t]
            .clustering
            .iter()
            .map(|(_, o)| *o)
            .collect()
    };
    assert_eq!(order("messages"), [cql::Order::Desc, cql::Order::Desc]);
    assert_eq!(order("inbox"), [cql::Order::Asc, cql::Order::Asc]);
}

/// No secondary index or materialized view: with either, ScyllaDB reads (and locks) the base
/// row before every write to the table.
#[test]
fn no_table_has_an_index_or_a_view() {
    let schema = schema();
    for table in schema.tables.values() {
        assert!(table.local_indexes.is_empty(), "{}: an index", table.name);
    }
    let upper = SCHEMA_CQL.to_ascii_uppercase();
    for kind in ["CREATE INDEX", "CREATE CUSTOM INDEX", "MATERIALIZED VIEW"] {
        assert!(!upper.contains(kind), "schema.cql has {kind}");
    }
}

/// The outbox is a queue (each row deleted right after its insert): it is read one small
/// time bucket at a time, never across its whole history, its tombstones go once the hint
/// window is over, and a TTL bounds whatever no node re-drove.
#[test]
fn the_outbox_is_read_by_time_bucket_and_expires() {
    let schema = schema();
    let outbox = &schema.tables["outbox"];
    assert_eq!(outbox.partition_key, ["bucket", "shard"]);
    let gc: u64 = outbox.options["gc_grace_seconds"].parse().unwrap();
    assert!(
        gc >= 3 * 3600,
        "gc_grace_seconds {gc} shorter than the hint window"
    );
    assert!(outbox.options["tombstone_gc"].contains("timeout"));
    assert!(outbox.options["compaction"].contains("TimeWindowCompactionStrategy"));
    let ttl: u64 = outbox.options["default_time_to_live"].parse().unwrap();
    assert!(
        ttl >= 86_400,
        "the safety TTL outlives any recovery lookback"
    );
    for (name, text) in statements::STATEMENTS {
        let st = Statement::parse(text).unwrap();
        if st.table == "outbox" && st.kind == cql::StatementKind::Select {
            // The check above already requires the whole partition key by equality; a
            // partition is one bucket and shard.
            assert!(
                st.relations.iter().any(|r| r.columns == ["bucket"]),
                "{name}: reads the outbox without a time bucket"
            );
        }
    }
}

/// Aggregates page inside ScyllaDB at the client's page size under one timeout: the one
/// count (of members, on membership changes) runs unpaged under its own profile.
#[test]
fn the_only_aggregate_is_the_member_count() {
    let counts: Vec<&str> = statements::STATEMENTS
        .iter()
        .filter(|(_, text)| text.to_ascii_uppercase().contains("COUNT("))
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(counts, ["count_members"]);
}

/// Every collection column is frozen: a non-frozen one writes a collection tombstone with
/// every overwrite.
#[test]
fn collections_are_frozen() {
    for table in schema().tables.values() {
        for (column, t) in &table.columns {
            let mutable_collection =
                matches!(t, CqlType::List(_) | CqlType::Set(_) | CqlType::Map(..));
            assert!(!mutable_collection, "{}.{column}: {t:?}", table.name);
        }
    }
}

/// Reads run at the read level and writes at the write level (ScyllaDB refuses EACH_QUORUM
/// for reads, which a single setting for both would have allowed).
#[test]
fn each_statement_runs_at_the_level_of_its_kind() {
    use scylla::statement::Consistency;
    let levels = statements::Levels {
        read: Consistency::LocalQuorum,
        write: Consistency::EachQuorum,
    };
    for (name, text) in statements::STATEMENTS {
        let st = Statement::parse(text).unwrap();
        let expected = if st.kind == cql::StatementKind::Select {
            Consistency::LocalQuorum
        } else {
            Consistency::EachQuorum
        };
        assert_eq!(levels.of(text), expected, "{name}");
    }
}
