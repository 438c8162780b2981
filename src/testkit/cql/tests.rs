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
