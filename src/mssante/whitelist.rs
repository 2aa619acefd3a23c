//! The trust space's whitelist: the mail domains of the MSSanté operators, published as XML
//! (`//Domaine/Nom` in the namespace `https://listeblanche.mssante.fr/schema`). A
//! recipient whose domain is not on it is never mailed.

use super::{ImportError, normalise_domain};

/// The whitelist's XML namespace.
pub const NAMESPACE: &str = "https://listeblanche.mssante.fr/schema";

/// The domains of a whitelist file (sorted, each once). An unreadable file, a file with no
/// domain, or a `Nom` that is not a domain name is an error: an import never half-applies.
pub fn parse(file: &str, xml: &str) -> Result<Vec<String>, ImportError> {
    let err = |at: String, problem: String| ImportError {
        file: file.to_owned(),
        at,
        problem,
    };
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| err(String::new(), format!("not well-formed XML: {e}")))?;
    let mut out = Vec::new();
    for dom in doc
        .descendants()
        .filter(|n| n.has_tag_name((NAMESPACE, "Domaine")))
    {
        for nom in dom
            .children()
            .filter(|n| n.has_tag_name((NAMESPACE, "Nom")))
        {
            let line = doc.text_pos_at(nom.range().start).row;
            let text = nom.text().unwrap_or_default();
            match normalise_domain(text) {
                Some(d) => out.push(d),
                None => {
                    return Err(err(
                        format!("line {line}: "),
                        "Domaine/Nom is not a domain name".into(),
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(err(
            String::new(),
            format!("no Domaine/Nom in the namespace {NAMESPACE}: not a whitelist"),
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_in_the_namespace_only() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">
  <Domaine><Nom>medecin.mssante.fr</Nom></Domaine>
  <Domaine><Nom> CH-Nordville.MSSante.fr </Nom><Operateur>X</Operateur></Domaine>
  <Domaine><Nom>medecin.mssante.fr</Nom></Domaine>
  <other:Domaine xmlns:other="urn:x"><other:Nom>evil.example</other:Nom></other:Domaine>
</ListeBlanche>"#;
        assert_eq!(
            parse("wl.xml", xml).expect("parses"),
            ["ch-nordville.mssante.fr", "medecin.mssante.fr"]
        );
    }

    #[test]
    fn bad_files_are_refused_whole() {
        let e = parse("wl.xml", "<ListeBlanche>").expect_err("not XML");
        assert!(
            e.to_string().starts_with("wl.xml: not well-formed XML"),
            "{e}"
        );
        let e = parse(
            "wl.xml",
            "<a xmlns='urn:x'><Domaine><Nom>x.fr</Nom></Domaine></a>",
        )
        .expect_err("wrong namespace");
        assert!(e.problem.contains("not a whitelist"), "{e}");
        let xml = "<L xmlns='https://listeblanche.mssante.fr/schema'>\n<Domaine><Nom>ok.fr</Nom></Domaine>\n<Domaine><Nom>not a domain</Nom></Domaine></L>";
        let e = parse("wl.xml", xml).expect_err("bad name");
        assert_eq!(e.at, "line 3: ");
        // A DTD (entity expansion) is refused.
        let xml = "<!DOCTYPE L [<!ENTITY a 'x'>]><L xmlns='https://listeblanche.mssante.fr/schema'><Domaine><Nom>a.fr</Nom></Domaine></L>";
        assert!(parse("wl.xml", xml).is_err());
    }
}
