//! What the daemon serves is what dbus/interfaces/*.xml says: every method
//! with the same argument signatures, nothing more, nothing less. (And the
//! fake agent of these tests speaks the Agent1 of the document.)

use std::collections::BTreeMap;

use fidoseal_dbus::{BUS_NAME, OBJECT_PATH};
use zbus::fdo::IntrospectableProxy;

use super::fakes::agent_introspection;
use super::{Harness, Options};

/// Method name → (in signature, out signature) of `interface` in an
/// introspection document.
fn methods(xml: &str, interface: &str) -> BTreeMap<String, (String, String)> {
    let xml = strip_comments(xml);
    let start =
        xml.find(&format!("<interface name=\"{interface}\"")).unwrap_or_else(|| panic!("no {interface} in {xml}"));
    let body = &xml[start..];
    let body = &body[..body.find("</interface>").expect("interface closes")];
    let mut found = BTreeMap::new();
    for method in body.split("<method ").skip(1) {
        let name = attribute(method, "name").expect("method name");
        let method = method.split("</method>").next().unwrap_or(method);
        let (mut ins, mut outs) = (String::new(), String::new());
        for arg in method.split("<arg ").skip(1) {
            let arg = arg.split('>').next().unwrap_or(arg);
            let signature = attribute(arg, "type").expect("arg type");
            match attribute(arg, "direction").as_deref() {
                Some("out") => outs.push_str(&signature),
                _ => ins.push_str(&signature),
            }
        }
        found.insert(name, (ins, outs));
    }
    found
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let tag = tag.split('>').next().unwrap_or(tag);
    let at = tag
        .find(&format!(" {name}=\""))
        .map(|i| i + 1)
        .or_else(|| tag.starts_with(&format!("{name}=\"")).then_some(0))?;
    let value = &tag[at + name.len() + 2..];
    Some(value[..value.find('"')?].to_string())
}

fn strip_comments(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(open) = rest.find("<!--") {
        out.push_str(&rest[..open]);
        rest = rest[open..].find("-->").map_or("", |close| &rest[open + close + 3..]);
    }
    out.push_str(rest);
    out
}

fn document(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus/interfaces").join(format!("{name}.xml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_xml_reader_reads() {
    let xml = r#"<node><!-- <method name="Hidden"/> --><interface name="a.B">
        <method name="M"><arg name="x" type="t" direction="in"/><arg type="a{sv}" name="d"/><arg direction="out" type="s" name="r"/></method>
        <method name="N"/></interface></node>"#;
    let found = methods(xml, "a.B");
    assert_eq!(found.len(), 2);
    assert_eq!(found["M"], ("ta{sv}".to_string(), "s".to_string()));
    assert_eq!(found["N"], (String::new(), String::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn served_interfaces_match_the_documents() {
    let h = Harness::start("contract", Options::default()).await;
    let me = h.bus.connect().await;
    let served = IntrospectableProxy::builder(&me)
        .destination(BUS_NAME)
        .unwrap()
        .path(OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap()
        .introspect()
        .await
        .unwrap();
    for (file, interface) in [
        ("org.fidoseal.AgentManager1", "org.fidoseal.AgentManager1"),
        ("org.fidoseal.Manager1", "org.fidoseal.Manager1"),
    ] {
        let documented = methods(&document(file), interface);
        assert!(!documented.is_empty());
        assert_eq!(methods(&served, interface), documented, "{interface}");
    }

    // The bus policy lets nobody but root's Agent1 calls reach an agent, so
    // the fake is introspected in process.
    let served = agent_introspection();
    assert_eq!(
        methods(&served, "org.fidoseal.Agent1"),
        methods(&document("org.fidoseal.Agent1"), "org.fidoseal.Agent1")
    );
}
