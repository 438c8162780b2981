use super::*;

#[test]
fn flipped_ids_keep_unsigned_order_in_signed_columns() {
    let ids = [0u64, 1, 1 << 40, (1 << 63) - 1, 1 << 63, u64::MAX];
    for pair in ids.windows(2) {
        assert!(id_to_cql(pair[0]) < id_to_cql(pair[1]), "{pair:?}");
    }
    for id in ids {
        assert_eq!(id_from_cql(id_to_cql(id)), id);
    }
    let hole = hole_message_id("g:a", 3);
    assert!(
        id_to_cql(hole) > id_to_cql(1 << 62),
        "holes sort after snowflakes"
    );
}

#[test]
fn consistency_and_keyspace_names_are_validated() {
    assert_eq!(
        parse_consistency("LOCAL_QUORUM"),
        Ok(Consistency::LocalQuorum)
    );
    assert!(parse_consistency("most").is_err());
    assert!(valid_keyspace("timeline_test_1"));
    for bad in ["", "1abc", "Timeline", "a-b", "a;drop", &"x".repeat(49)] {
        assert!(!valid_keyspace(bad), "{bad}");
    }
}

#[test]
fn reads_never_run_at_each_quorum() {
    let each = ScyllaOptions {
        read_consistency: Consistency::EachQuorum,
        ..ScyllaOptions::default()
    };
    let err = each.validate().unwrap_err();
    assert!(err.contains("read_consistency"), "{err}");
    let writes = ScyllaOptions {
        write_consistency: Consistency::EachQuorum,
        ..ScyllaOptions::default()
    };
    assert_eq!(writes.validate(), Ok(()));
}

#[test]
fn several_datacenters_need_a_local_one_named() {
    let dcs = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert_eq!(datacenter_problem(&dcs(&["dc1"]), ""), None);
    assert_eq!(datacenter_problem(&dcs(&["dc1", "dc2"]), "dc2"), None);
    let several = datacenter_problem(&dcs(&["dc1", "dc2"]), "").unwrap();
    assert!(
        several.contains("dc1, dc2") && several.contains("local_dc"),
        "{several}"
    );
    let unknown = datacenter_problem(&dcs(&["dc1"]), "dc9").unwrap();
    assert!(unknown.contains("dc9"), "{unknown}");
}

fn options() -> ScyllaOptions {
    ScyllaOptions {
        keyspace: "chat_prod".parse().expect("a valid name"),
        ..ScyllaOptions::default()
    }
}

#[test]
fn migration_targets_the_configured_keyspace_and_replication() {
    let statements = migration_statements(&options()).unwrap();
    assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS chat_prod"));
    assert!(statements[0].contains("'replication_factor': 3"));
    assert!(
        statements[0].ends_with("AND tablets = {'enabled': false}"),
        "vnodes: the conversation creation LWT is not supported on tablets"
    );
    assert!(statements.iter().skip(1).all(|s| s.contains("chat_prod.")
        && !s.contains("timeline.")
        && s.contains("IF NOT EXISTS")));
    let dc = ScyllaOptions {
        local_dc: "eu-west".into(),
        replication_factor: 5,
        ..options()
    };
    assert!(migration_statements(&dc).unwrap()[0].contains("'eu-west': 5"));
    let zero = ScyllaOptions {
        replication_factor: 0,
        ..options()
    };
    assert!(migration_statements(&zero).is_err());
}
