//! What the daemon serves is what dbus/interfaces/*.xml says: every method
//! with the same argument signatures, nothing more, nothing less. (And the
//! fake agent of these tests speaks the Agent1 of the document.)

use std::collections::BTreeMap;

use fidoseal_dbus::{BUS_NAME, OBJECT_PATH};
use zbus::fdo::IntrospectableProxy;

use super::fakes::agent_introspection;
use super::{Harness, Options};

/// Method name → (in signature, out signature) of `interface` in an
/// introspection document, read by zbus's own introspection parser.
fn methods(xml: &str, interface: &str) -> BTreeMap<String, (String, String)> {
    let node = zbus_xml::Node::try_from(xml).unwrap_or_else(|e| panic!("not introspection XML ({e}): {xml}"));
    let interface = node
        .interfaces()
        .iter()
        .find(|i| i.name().as_str() == interface)
        .unwrap_or_else(|| panic!("no {interface} in {xml}"));
    let mut found = BTreeMap::new();
    for method in interface.methods() {
        let (mut ins, mut outs) = (String::new(), String::new());
        for arg in method.args() {
            match arg.direction() {
                Some(zbus_xml::ArgDirection::Out) => outs.push_str(&arg.ty().to_string()),
                _ => ins.push_str(&arg.ty().to_string()),
            }
        }
        found.insert(method.name().to_string(), (ins, outs));
    }
    found
}

fn document(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus/interfaces").join(format!("{name}.xml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn methods_are_read_with_their_signatures_and_comments_are_not() {
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
    let documented = methods(&document("org.fidoseal.Agent1"), "org.fidoseal.Agent1");
    assert!(!documented.is_empty());
    assert_eq!(methods(&served, "org.fidoseal.Agent1"), documented);
}
