//! Results access for practitioners outside the establishment: who may read which patient's
//! results where, over practitioners × patients × establishments, every cell exact. The
//! links come from results ingested through the real pipeline (ORC-12, OBR-16, OBR-28, PRT
//! `RCT`) and from operator grants; only an establishment whose routes allow external access
//! opens at all.

mod common;

use common::*;
use labroute::access::{Denial, Link, decide};
use labroute::store::writer::OperatorCommand;

/// A result for `patient` of `es` naming practitioners in ORC-12, OBR-16, OBR-28 and PRT.
fn result(
    es: &str,
    ctrl: &str,
    patient: &str,
    orc12: &str,
    obr16: &str,
    obr28: &str,
    prt: &str,
) -> Vec<u8> {
    let auth = if es == "ES1" {
        "CHNORD-IPP"
    } else {
        "CHSUD-IPP"
    };
    let mut obr = vec![""; 29];
    obr[0] = "OBR";
    obr[1] = "1";
    obr[4] = "K^Potassium^L";
    obr[16] = obr16;
    obr[25] = "F";
    obr[28] = obr28;
    let mut m = format!(
        "MSH|^~\\&|SIL|LAB|DPI||20250301100000||ORU^R01^ORU_R01|{ctrl}|P|2.5|||||FRA|UNICODE UTF-8\r\
PID|||{patient}^^^{auth}^PI||TEST^PATIENT\rORC|RE|||||||||||{orc12}\r{}\r",
        obr.join("|")
    );
    if !prt.is_empty() {
        m.push_str(prt);
        m.push('\r');
    }
    m.push_str("OBX|1|NM|K^Potassium^L||4.1|mmol/L|||||F\r");
    m.into_bytes()
}

fn rpps(n: u8) -> String {
    format!("1000000000{n}")
}

fn xcn(n: u8) -> String {
    format!("{}^DOC{n}^A^^^^^^^^^^RPPS", rpps(n))
}

#[tokio::test]
async fn who_reads_whose_results_where() {
    let h = Harness::start(|r| {
        r.replacen(
            "record = \"dpi-es1\"\n",
            "record = \"dpi-es1\"\nexternal_access = true\n",
            1,
        )
    })
    .await;
    // 1: orders P1's result at ES1 (ORC-12); 2: gets a copy (OBR-28); 3: recipient of P2's
    // (PRT RCT, IDNPS form); 4: granted P2 at ES1 by an operator; 5: orders P3's at ES2
    // (OBR-16); 6: granted P3 at ES2; 7: named only as a sender (PRT SB) of P1's.
    let prt_rct =
        "PRT||UC||RCT^^participation|810000000003^R^C^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS";
    let prt_sb =
        "PRT||UC||SB^^participation|810000000007^S^G^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS";
    let results = [
        result("ES1", "R1", "P1", &xcn(1), "", &xcn(2), prt_sb),
        result("ES1", "R2", "P2", "", "", "", prt_rct),
        result("ES2", "R3", "P3", "", &xcn(5), "", ""),
    ];
    let acks = send_all(h.sil(), &results).await.expect("ACKs");
    assert!(acks.iter().all(|a| msa(a).0 == "AA"), "{acks:?}");
    for (es, auth, id, n) in [
        ("ES1", "CHNORD-IPP", "P2", 4),
        ("ES2", "CHSUD-IPP", "P3", 6),
    ] {
        care_grant(&h, es, auth, id, &rpps(n), true).await;
    }

    let cells = [
        ("ES1", "CHNORD-IPP\u{1f}P1"),
        ("ES1", "CHNORD-IPP\u{1f}P2"),
        ("ES2", "CHSUD-IPP\u{1f}P3"),
        // The same identifiers asked of the other establishment.
        ("ES2", "CHNORD-IPP\u{1f}P1"),
        ("ES1", "CHSUD-IPP\u{1f}P3"),
        ("ES9", "CHNORD-IPP\u{1f}P1"),
    ];
    let table = || -> Vec<Vec<String>> {
        (1..=7)
            .map(|n| {
                cells
                    .iter()
                    .map(|(es, pk)| {
                        match decide(
                            h.server.store.store(),
                            &h.server.store.config(),
                            &rpps(n),
                            es,
                            pk,
                        )
                        .expect("store")
                        {
                            Ok(link) => link.as_str().to_owned(),
                            Err(d) => d.as_str().to_owned(),
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let (no, closed, unknown) = (
        Denial::NotInCare.as_str(),
        Denial::NotOpen.as_str(),
        Denial::UnknownEstablishment.as_str(),
    );
    let row = |a: &str, b: &str| -> Vec<String> {
        [a, b, closed, closed, no, unknown]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let want = vec![
        row(Link::Ordering.as_str(), no),
        row(Link::Copy.as_str(), no),
        row(no, Link::Recipient.as_str()),
        row(no, Link::Grant.as_str()),
        row(no, no),
        row(no, no),
        row(no, no),
    ];
    assert_eq!(table(), want);

    // A withdrawn grant closes the cell again.
    care_grant(&h, "ES1", "CHNORD-IPP", "P2", &rpps(4), false).await;
    let mut want = want;
    want[3] = row(no, no);
    assert_eq!(table(), want);
}

/// A result held in quarantine records its care links when an operator releases it.
#[tokio::test]
async fn a_released_result_records_its_care_links() {
    let h = Harness::start(|r| {
        r.replacen(
            "record = \"dpi-es1\"\n",
            "record = \"dpi-es1\"\nexternal_access = true\n",
            1,
        )
    })
    .await;
    // No establishment evidence: quarantined.
    let held = String::from_utf8(result("ES1", "Q1", "P9", &xcn(8), "", "", ""))
        .expect("utf8")
        .replace("^CHNORD-IPP^PI", "^UNKNOWN-IPP^PI")
        .into_bytes();
    let acks = send_all(h.sil(), &[held]).await.expect("ACK");
    assert_eq!(msa(&acks[0]).0, "AA");
    let store = h.server.store.store();
    let cfg = h.server.store.config();
    let quarantined = store.quarantine().expect("quarantine");
    assert_eq!(quarantined.len(), 1);
    let pk = "UNKNOWN-IPP\u{1f}P9";
    assert_eq!(
        decide(store, &cfg, &rpps(8), "ES1", pk).expect("store"),
        Err(Denial::NotInCare)
    );
    h.server
        .store
        .operator(
            OperatorCommand::Release {
                seq: quarantined[0].0.seq,
                establishment: "ES1".into(),
            },
            &local_operator("ops"),
        )
        .await
        .expect("released");
    assert_eq!(
        decide(store, &cfg, &rpps(8), "ES1", pk).expect("store"),
        Ok(Link::Ordering)
    );
}
