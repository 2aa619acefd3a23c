use super::*;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_sources(&[(PathBuf::from("routes/t.toml"), text.to_owned())])
}

const GOOD: &str = r#"
[[listener]]
name = "sil"
bind = "127.0.0.1:2575"
insecure = true

[[destination]]
name = "dpi-es1"
address = "127.0.0.1:3001"
insecure = true

[[destination]]
name = "dpi-es2"
address = "127.0.0.1:3002"
insecure = true

[[establishment]]
id = "ES1"
name = "CH Nord"
finess = ["750000001"]
record = "dpi-es1"
identify.placer_namespaces = ["DPI-ES1"]

[[establishment]]
id = "ES2"
name = "CH Sud"
finess = ["2A0000002"]
record = "dpi-es2"
identify.placer_namespaces = ["DPI-ES2"]
"#;

#[test]
fn a_good_file_validates() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.establishments.len(), 2);
    assert_eq!(
        c.identify(IdKind::PlacerNamespace, "DPI-ES2")
            .unwrap()
            .as_str(),
        "ES2"
    );
    assert_eq!(
        c.identify(IdKind::Finess, "750000001").unwrap().as_str(),
        "ES1"
    );
}

#[test]
fn every_error_is_reported_at_once_with_file_line_and_field() {
    let bad = GOOD
        .replace("record = \"dpi-es2\"", "record = \"dpi-es3\"")
        .replace("\"DPI-ES2\"", "\"DPI-ES1\"")
        .replace("\"2A0000002\"", "\"12345\"")
        .replace("127.0.0.1:3002", "nowhere");
    let errs = load(&bad).unwrap_err().0;
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 4, "{text:#?}");
    assert!(
        text.contains(
            &"routes/t.toml:14: destination[1].address: \"nowhere\" is not a host:port address"
                .to_owned()
        ),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("routes/t.toml:27: establishment[1].finess:")),
        "{text:#?}"
    );
    assert!(text.iter().any(|t| t.starts_with("routes/t.toml:29: establishment[1].identify.placer_namespaces: \"DPI-ES1\" already identifies establishment ES1")), "{text:#?}");
    assert!(
        text.iter().any(|t| t.starts_with(
            "routes/t.toml:28: establishment[1].record: no destination is named \"dpi-es3\""
        )),
        "{text:#?}"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let errs = load(&GOOD.replace(
        "insecure = true\n\n[[destination]]\nname = \"dpi-es1\"",
        "insecure = true\nbogus = 1\n\n[[destination]]\nname = \"dpi-es1\"",
    ))
    .unwrap_err()
    .0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 6);
    assert!(
        errs[0].message.contains("unknown field `bogus`"),
        "{}",
        errs[0].message
    );
}

#[test]
fn plain_tcp_is_refused_off_loopback() {
    let errs = load(&GOOD.replace("127.0.0.1:2575", "0.0.0.0:2575"))
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1);
    assert!(errs[0].to_string().contains(
        "listener[0].bind: an insecure (plain TCP) listener must bind a loopback address"
    ));
}

#[test]
fn finess_shapes() {
    assert!(is_finess("750000001"));
    assert!(is_finess("2B0001234"));
    assert!(!is_finess("2C0001234"));
    assert!(!is_finess("75000000"));
}

#[test]
fn systems_are_validated_and_tls_listeners_need_tls() {
    let text = format!(
        "{GOOD}{}",
        r#"
[[system]]
name = "dpi-es1"
role = "order_placer"
san_uri = ["urn:labroute:system:dpi-es1"]
establishments = ["ES1"]
[[system]]
name = "rogue"
role = "boss"
san_uri = ["urn:labroute:system:dpi-es1"]
establishments = ["ES9"]
[[system]]
name = "cn-only"
role = "operator"
establishments = ["ES1"]
[[listener]]
name = "tls"
bind = "127.0.0.1:2590"
"#
    );
    let errs = load(&text).unwrap_err().to_string();
    for want in [
        "system[1].role: \"boss\"",
        "system[1].san_uri: \"urn:labroute:system:dpi-es1\" already identifies system \"dpi-es1\"",
        "system[1].establishments: no establishment has id \"ES9\"",
        "system[2].san_uri: no san_uri, san_dns or sha256",
        "listener[1].bind: TLS needs a [tls] section",
    ] {
        assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
    }
}

#[test]
fn a_destination_s_system_must_speak_for_what_it_receives() {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let tls = format!(
        "[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\n",
        certs.display()
    );
    let systems = r#"
[[system]]
name = "dpi-es1"
role = "order_placer"
san_uri = ["urn:labroute:system:dpi-es1"]
establishments = ["ES1"]
[[system]]
name = "dpi-es2"
role = "record_receiver"
san_uri = ["urn:labroute:system:dpi-es2"]
establishments = ["ES2"]
"#;
    let ok =
        GOOD.replace(
            "address = \"127.0.0.1:3001\"\ninsecure = true",
            "address = \"127.0.0.1:3001\"\nsystem = \"dpi-es1\"",
        )
        .replace(
            "address = \"127.0.0.1:3002\"\ninsecure = true",
            "address = \"127.0.0.1:3002\"\nsystem = \"dpi-es2\"",
        ) + &tls
            + systems;
    let c = load(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.destinations[0].system.as_deref(), Some("dpi-es1"));
    // Swapped: each destination's system speaks for the other establishment.
    let swapped = ok
        .replace("system = \"dpi-es1\"", "system = \"X\"")
        .replace("system = \"dpi-es2\"", "system = \"dpi-es1\"")
        .replace("system = \"X\"", "system = \"dpi-es2\"");
    let e = load(&swapped).unwrap_err().to_string();
    assert!(
        e.contains("destination[0].system: system \"dpi-es2\" does not speak for ES1"),
        "{e}"
    );
    assert!(
        e.contains("destination[1].system: system \"dpi-es1\" does not speak for ES2"),
        "{e}"
    );
    // Unknown system; a system on a plain-TCP destination.
    let bad = ok
        .replace("system = \"dpi-es1\"", "system = \"nobody\"")
        .replace(
            "address = \"127.0.0.1:3002\"\nsystem",
            "address = \"127.0.0.1:3002\"\ninsecure = true\nsystem",
        );
    let e = load(&bad).unwrap_err().to_string();
    assert!(e.contains("no [[system]] is named \"nobody\""), "{e}");
    assert!(e.contains("needs TLS"), "{e}");
}

#[test]
fn the_fhir_section_is_checked_field_by_field() {
    let c = load(&format!("{GOOD}[fhir]\nzone = \"+04:00\"\n")).unwrap();
    assert_eq!(c.fhir.zone, crate::fhir::Zone::Fixed(240));
    assert_eq!(c.fhir.bind, None);
    let bad = GOOD.replace("name = \"sil\"", "name = \"fhir\"")
        + "[fhir]\nbind = \"127.0.0.1:2581\"\nzone = \"Paris\"\n";
    let errs = load(&bad).unwrap_err().0;
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 3, "{text:#?}");
    assert!(
        text.iter().any(|t| t.starts_with(
            "routes/t.toml:3: listener[0].name: \"fhir\" is the name of an HTTPS endpoint"
        )),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("routes/t.toml:32: fhir.zone: \"Paris\" is not a zone")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t
            .starts_with("routes/t.toml:31: fhir.bind: the FHIR endpoint needs a [tls] section")),
        "{text:#?}"
    );
}

#[test]
fn the_dmp_needs_a_ca_of_its_own_or_the_tls_one() {
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.pem");
    let with_ca = format!("{GOOD}[dmp]\nurl = \"https://dmp.example:8443/fhir\"\nca = \"{ca}\"\n");
    let c = load(&with_ca).unwrap();
    let dmp = c
        .destination(&DestinationName::new(DMP_DESTINATION))
        .unwrap();
    assert_eq!(dmp.address, "dmp.example:8443");
    assert_eq!(dmp.server_name.as_deref(), Some("dmp.example"));
    let errs = load(&format!(
        "{GOOD}[dmp]\nurl = \"https://dmp.example/fhir\"\n"
    ))
    .unwrap_err()
    .0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field, "dmp.ca");
    assert!(errs[0].message.contains("set [dmp] ca"), "{}", errs[0]);
    let errs = load(&format!(
        "{GOOD}[dmp]\nurl = \"http://dmp.example/fhir\"\nca = \"{ca}\"\n"
    ))
    .unwrap_err()
    .0;
    assert_eq!(errs[0].field, "dmp.url");
}

#[test]
fn a_toml_error_names_the_key_when_it_is_about_one() {
    let dup = GOOD.replacen(
        "insecure = true\n",
        "insecure = true\ninsecure = false\n",
        1,
    );
    let e = load(&dup).unwrap_err().0;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].field.as_str()), (6, "insecure"), "{e:?}");
    let broken = format!("{GOOD}\n[[listener]\n");
    let e = load(&broken).unwrap_err().0;
    assert_eq!(e[0].field, "-", "{e:?}");
}

#[test]
fn the_routing_digest_covers_what_the_writer_decides_with_and_not_what_each_node_binds() {
    let digest = |text: &str| load(text).unwrap().routing_digest();
    let base = digest(GOOD);
    assert_eq!(base, digest(GOOD), "the same text, the same digest");
    // Per node: the address a listener binds, the node's [store] name.
    assert_eq!(
        base,
        digest(&GOOD.replace("127.0.0.1:2575", "127.0.0.1:2576"))
    );
    // What the writer decides with: an identifier moved, an establishment's record.
    assert_ne!(
        base,
        digest(&GOOD.replace("DPI-ES1\"]", "DPI-ES1\", \"DPI-X\"]"))
    );
    assert_ne!(
        base,
        digest(&GOOD.replace(
            "record = \"dpi-es1\"\nidentify",
            "record = \"dpi-es2\"\nidentify"
        ))
    );
    assert_ne!(base, digest(&GOOD.replace("CH Sud", "CH Sud 2")));
    // The digest shows as its first 12 hex digits and reads back whole.
    let d = load(GOOD).unwrap().routing_digest();
    assert_eq!(d.to_string().len(), 12);
    assert_eq!(RoutesDigest::from_hex(&crate::model::hex(&d.0)), Some(d));
    assert_eq!(RoutesDigest::from_hex("zz"), None);
}

#[test]
fn the_jetstream_store_is_checked_field_by_field() {
    let with = |store: &str| load(&format!("{GOOD}\n{store}"));
    let ok = with(
        "[store]\nkind = \"jetstream\"\nservers = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\n",
    )
    .unwrap();
    let StoreKind::JetStream(js) = &ok.store else {
        panic!("a JetStream store");
    };
    assert_eq!(js.replicas, 1);
    assert_eq!(js.forget_node_after, Duration::from_secs(24 * 3600));
    let err = with(
        "[store]\nkind = \"jetstream\"\nservers = [\"nats://127.0.0.1:4222\"]\nreplicas = 2\nforget_node_after_hours = 0\n",
    )
    .unwrap_err()
    .to_string();
    for field in [
        "store.replicas",
        "store.forget_node_after_hours",
        "store.node",
    ] {
        assert!(err.contains(field), "{field} in {err}");
    }
    let err = with("[store]\nkind = \"embedded\"\nforget_node_after_hours = 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("only for kind = \"jetstream\""), "{err}");
}

#[test]
fn the_write_ahead_log_is_for_the_embedded_store_only() {
    let with = |store: &str| load(&format!("{GOOD}\n{store}"));
    let on = with("[store]\nkind = \"embedded\"\nwrite_ahead_log = true\n").unwrap();
    assert_eq!(on.store, StoreKind::EmbeddedWal);
    let off = with("[store]\nkind = \"embedded\"\nwrite_ahead_log = false\n").unwrap();
    assert_eq!(off.store, StoreKind::Embedded);
    assert_eq!(load(GOOD).unwrap().store, StoreKind::Embedded);
    // Not a routing change: a node may turn it on alone, by a restart (not a reload).
    assert_eq!(on.routing_digest(), off.routing_digest());
    assert_eq!(crate::reload::needs_restart(&off, &on), ["[store]"]);
    assert!(crate::reload::needs_restart(&on, &on).is_empty());
    let e = with("[store]\nkind = \"jetstream\"\nservers = [\"nats://127.0.0.1:4222\"]\nnode = \"a\"\nwrite_ahead_log = true\n")
        .unwrap_err()
        .0;
    assert_eq!(e[0].field, "store.write_ahead_log", "{e:?}");
}
