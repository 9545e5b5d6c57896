//! Per-user devices in process: each user's store, key context and
//! authenticator, driven over CTAPHID with the test crate's client; and the
//! upgrade of a single-user state directory.

use super::*;

#[test]
fn the_hidraw_node_is_found_by_its_uniq() {
    let temp_dir = tempfile::tempdir().unwrap();
    let dir = temp_dir.path();
    for (node, uniq) in [("hidraw0", "ABC123"), ("hidraw1", "fidoseal-uid-1001"), ("hidraw2", "fidoseal-uid-10012")] {
        std::fs::create_dir_all(dir.join(node).join("device")).unwrap();
        std::fs::write(
            dir.join(node).join("device/uevent"),
            format!("DRIVER=hid-generic\nHID_NAME=x\nHID_UNIQ={uniq}\nMODALIAS=hid:b0003\n"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("hidraw3")).unwrap();
    assert_eq!(hidraw_node_with_uniq(dir, "fidoseal-uid-1001"), Some(PathBuf::from("/dev/hidraw1")));
    assert_eq!(hidraw_node_with_uniq(dir, "fidoseal-uid-10012"), Some(PathBuf::from("/dev/hidraw2")));
    assert_eq!(hidraw_node_with_uniq(dir, "fidoseal-uid-100"), None, "a prefix is not a match");
    assert_eq!(hidraw_node_with_uniq(&dir.join("nope"), "x"), None);
}

use fidoseal_ctap::ctaphid::CtapHid;
use fidoseal_ctap::platform::CredentialStore;
use fidoseal_tests::requests::{get_assertion, make_credential, rk};
use fidoseal_tests::responses::{get, parse_registration, verify};
use fidoseal_tests::{status, DenyList, Device, ScriptedPrompt};

const MAKE_CREDENTIAL: u8 = 0x01;
const GET_ASSERTION: u8 = 0x02;

const PER_USER: &str =
    "[keystore]\nbackend = \"software\"\n[prompt]\nmode = \"always-approve\"\n[device]\nmode = \"per-user\"\n";

/// A state directory of its own, removed with the value.
struct StateDir {
    path: PathBuf,
    _temp_dir: tempfile::TempDir,
}

impl StateDir {
    fn new(name: &str) -> Self {
        let temp_dir = tempfile::Builder::new().prefix(&format!("fidoseal-devices-{name}-")).tempdir().unwrap();
        let dir = temp_dir.path().join("state");
        state::prepare_state_dir(&dir).unwrap();
        Self { path: dir, _temp_dir: temp_dir }
    }
}

/// The per-user factory of a daemon on `state_dir`, its software master
/// key read from (or made in) the state directory as fidoseald does.
fn factory(state_dir: &Path) -> (Config, DeviceFactory) {
    let config = Config::parse(PER_USER).unwrap();
    let keystore = keystore::PersistentSoftwareKeyStore::open(state_dir).unwrap();
    let factory = DeviceFactory {
        keystore: Arc::new(Mutex::new(Box::new(keystore))),
        policy: PolicyService::load(Vec::new(), None).unwrap(),
        state_dir: state_dir.to_path_buf(),
        capacity: 50,
        authenticator: authenticator_config(&config),
        anchor: None,
    };
    (config, factory)
}

/// A user's device from the factory, as the test client's synchronous device.
fn open(config: &Config, factory: &DeviceFactory, uid: u32, user: &str) -> (Device, SharedCredentialStore) {
    let devices = Devices::per_user();
    let device = factory.open_user(config, &devices, uid, user, Instant::now()).unwrap();
    let device = Arc::into_inner(device).expect("nothing else holds the device");
    let store = device.store.clone();
    let authenticator = Arc::into_inner(device.authenticator).expect("one holder").into_inner().unwrap();
    let hid = CtapHid::new(authenticator.device_version(), 0x1000);
    let client = Device {
        hid,
        authenticator,
        prompt: ScriptedPrompt::approving(),
        denied_rps: DenyList::default(),
        now: Instant::now(),
    };
    (client, store)
}

fn register(device: &mut Device, rp: &str, user: &str, resident: bool) -> Vec<u8> {
    let cid = device.init();
    let extra = if resident { vec![rk()] } else { Vec::new() };
    let (code, body) = device.ctap(cid, MAKE_CREDENTIAL, Some(make_credential(rp, user.as_bytes(), user, extra)));
    assert_eq!(code, status::OK, "makeCredential");
    parse_registration(&body.unwrap()).credential_id
}

fn assert_status(device: &mut Device, rp: &str, allow: &[&[u8]]) -> u8 {
    let cid = device.init();
    device.ctap(cid, GET_ASSERTION, Some(get_assertion(rp, allow, Vec::new()))).0
}

#[test]
fn each_user_has_their_own_credentials_and_key_context() {
    let dir = StateDir::new("separate");
    let (config, factory) = factory(&dir.path);
    let (mut alice, alice_store) = open(&config, &factory, 1001, "alice");
    let (mut bob, bob_store) = open(&config, &factory, 1002, "bob");
    let resident = register(&mut alice, "example.com", "alice", true);
    let server_side = register(&mut alice, "example.com", "alice", false);

    // Alice's device signs with both.
    assert_eq!(assert_status(&mut alice, "example.com", &[&server_side]), status::OK);
    assert_eq!(assert_status(&mut alice, "example.com", &[&resident]), status::OK);
    assert_eq!(assert_status(&mut alice, "example.com", &[]), status::OK, "discoverable");
    // Bob's refuses Alice's credential IDs, and has no passkey of hers.
    assert_eq!(assert_status(&mut bob, "example.com", &[&server_side]), status::NO_CREDENTIALS);
    assert_eq!(assert_status(&mut bob, "example.com", &[&resident]), status::NO_CREDENTIALS);
    assert_eq!(assert_status(&mut bob, "example.com", &[]), status::NO_CREDENTIALS);
    assert_eq!(alice_store.all_credentials().unwrap().len(), 1);
    assert!(bob_store.all_credentials().unwrap().is_empty(), "credential management lists the store's passkeys");

    // Each has a database and a key context of their own, root's only.
    for uid in ["1001", "1002"] {
        let user_dir = dir.path.join("users").join(uid);
        assert!(user_dir.join("credentials.db").exists() && user_dir.join("key-context").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&user_dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
    assert_ne!(
        std::fs::read(dir.path.join("users/1001/key-context")).unwrap(),
        std::fs::read(dir.path.join("users/1002/key-context")).unwrap()
    );

    // After a restart (a new factory on the same directory) Alice's device
    // still opens her credential ID, and Bob's still does not.
    drop((alice, bob, alice_store, bob_store, factory));
    let (config, factory) = self::factory(&dir.path);
    let (mut alice, _) = open(&config, &factory, 1001, "alice");
    let (mut bob, _) = open(&config, &factory, 1002, "bob");
    assert_eq!(assert_status(&mut alice, "example.com", &[&server_side]), status::OK);
    assert_eq!(assert_status(&mut bob, "example.com", &[&server_side]), status::NO_CREDENTIALS);
}

#[test]
fn a_single_user_state_becomes_its_owners_with_nothing_lost() {
    let dir = StateDir::new("migrate");
    // A single-mode daemon's state: its key store and database at the top.
    let (resident, server_side, public_key) = {
        let mut keys = keystore::PersistentSoftwareKeyStore::open(&dir.path).unwrap();
        let created = keys.just_created();
        let credentials = open_credentials(&dir.path, 50, &mut keys, created, Some("alice"), None).unwrap();
        let mut platform =
            fidoseal_tests::software_platform(Box::new(ScriptedPrompt::approving()), Box::new(DenyList::default()), 0);
        platform.keystore = Box::new(keys);
        platform.credentials = Box::new(credentials.clone());
        let authenticator = Authenticator::new(AuthenticatorConfig::default(), platform, Instant::now());
        let hid = CtapHid::new(authenticator.device_version(), 0x1000);
        let mut single = Device {
            hid,
            authenticator,
            prompt: ScriptedPrompt::approving(),
            denied_rps: DenyList::default(),
            now: Instant::now(),
        };
        let resident = register(&mut single, "example.com", "alice", true);
        let cid = single.init();
        let (code, body) =
            single.ctap(cid, MAKE_CREDENTIAL, Some(make_credential("example.org", b"a", "alice", Vec::new())));
        assert_eq!(code, status::OK);
        let registered = parse_registration(&body.unwrap());
        (resident, registered.credential_id, registered.public_key)
    };
    assert!(dir.path.join("credentials.db").exists());

    let moved = migrate_users::migrate_single_user_state(&dir.path, Some(("alice", Some(1001)))).unwrap();
    assert!(matches!(moved, migrate_users::Migration::Moved { uid: 1001, .. }), "{moved:?}");
    assert!(!dir.path.join("credentials.db").exists());

    let (config, factory) = factory(&dir.path);
    let (mut alice, alice_store) = open(&config, &factory, 1001, "alice");
    let (mut bob, _) = open(&config, &factory, 1002, "bob");
    // Every credential is Alice's still: the passkey, and the credential ID
    // a relying party keeps, which still signs with the same key.
    assert_eq!(alice_store.all_credentials().unwrap().len(), 1, "the passkey was not set aside");
    assert_eq!(assert_status(&mut alice, "example.com", &[&resident]), status::OK);
    let cid = alice.init();
    let (code, body) = alice.ctap(cid, GET_ASSERTION, Some(get_assertion("example.org", &[&server_side], Vec::new())));
    assert_eq!(code, status::OK);
    let body = body.unwrap();
    let auth_data = get(&body, 2).and_then(|v| v.as_bytes()).unwrap().clone();
    let signature = get(&body, 3).and_then(|v| v.as_bytes()).unwrap().clone();
    assert!(verify(&public_key, &auth_data, &[0x22; 32], &signature), "signed by the key registered before the move");
    // And none of it is Bob's.
    assert_eq!(assert_status(&mut bob, "example.org", &[&server_side]), status::NO_CREDENTIALS);
    assert_eq!(assert_status(&mut bob, "example.com", &[]), status::NO_CREDENTIALS);
}

fn bare_device(uid: Option<u32>, user: &str, registry: Arc<AgentRegistry>) -> Arc<UserDevice> {
    let mut platform =
        fidoseal_tests::software_platform(Box::new(ScriptedPrompt::approving()), Box::new(DenyList::default()), 0);
    let store = SharedCredentialStore::new(fidoseal_ctap::memory_store::MemoryCredentialStore::new(4));
    platform.credentials = Box::new(store.clone());
    let authenticator = Authenticator::new(AuthenticatorConfig::default(), platform, Instant::now());
    let handles = DeviceHandles::new(None, Box::new(DenyList::default()));
    Arc::new(UserDevice::new(
        uid,
        Some(user.into()),
        registry,
        store,
        Arc::new(Mutex::new(authenticator)),
        None,
        handles,
    ))
}

#[test]
fn callers_and_agents_are_routed_to_their_own_device() {
    let devices = Devices::per_user();
    let alice_registry = devices.registry_for(1001).unwrap();
    let bob_registry = devices.registry_for(1002).unwrap();
    assert!(!Arc::ptr_eq(&alice_registry, &bob_registry), "an agent of bob's is never alice's device's");
    assert!(Arc::ptr_eq(&alice_registry, &devices.registry_for(1001).unwrap()), "one registry per uid");
    devices.insert(bare_device(Some(1001), "alice", Arc::clone(&alice_registry)));
    devices.insert(bare_device(Some(1002), "bob", bob_registry));
    assert_eq!(devices.for_caller(1001).unwrap().user.as_deref(), Some("alice"));
    assert_eq!(devices.for_caller(1002).unwrap().user.as_deref(), Some("bob"));
    assert!(devices.for_caller(1003).is_err(), "no device, no one else's");
    assert!(devices.for_caller(0).err().is_some_and(|e| e.contains("2 devices")), "root must say whose");
    assert_eq!(devices.all().len(), 2);
    assert_eq!(devices.owned_by(1001).unwrap().uniq(), "fidoseal-uid-1001");
    devices.remove(1002);
    assert_eq!(devices.for_caller(0).unwrap().user.as_deref(), Some("alice"), "root: the only device");

    // Single mode: only [device] user's agent registers; root manages it.
    let registry = Arc::new(AgentRegistry::new());
    let single = Devices::single(bare_device(Some(1001), "alice", Arc::clone(&registry)));
    assert!(Arc::ptr_eq(&single.registry_for(1001).unwrap(), &registry));
    assert!(single.registry_for(1002).is_none());
    assert!(single.for_caller(1002).is_err());
    assert_eq!(single.for_caller(0).unwrap().user.as_deref(), Some("alice"));
    assert_eq!(single.for_reset(1002).unwrap().user.as_deref(), Some("alice"), "a polkit-authorized admin");
    let nobody = Devices::single(bare_device(None, "", Arc::new(AgentRegistry::new())));
    assert_eq!(nobody.all()[0].uniq(), "fidoseal-0", "no owner: the udev rule leaves it to the seat");
}

/// Single mode waiting for the boot state to be approved (main.rs): the
/// device is not open, yet its user's agent registers (with the registry the
/// device will use), so it is asked once the device opens. Refused, it would
/// not try again before fidoseald's next start.
#[test]
fn the_device_users_agent_registers_before_the_single_device_opens() {
    let lookup: crate::device_user::UserLookup = Arc::new(|name: &str| (name == "alice").then_some(1001));
    let alice = DeviceUser::resolve_with(Some("alice".into()), lookup);
    let registry = Arc::new(AgentRegistry::new());
    let devices = Devices::single_pending(Some(Arc::clone(&alice)), Arc::clone(&registry));

    let waiting = devices.registry_for(1001).expect("the device user's agent registers while the device is not open");
    assert!(Arc::ptr_eq(&waiting, &registry));
    assert!(devices.registry_for(1002).is_none(), "nobody else's agent");
    assert_eq!(devices.registries().len(), 1, "CancelRequest and UnregisterAgent find it");
    assert!(devices.all().is_empty() && devices.for_caller(1001).is_err(), "no device yet");
    assert!(devices.single_user().is_some_and(|user| user.is(1001)));

    // A device with another registry would lose the registered agent.
    assert!(devices.set_single(bare_device(Some(1001), "alice", Arc::new(AgentRegistry::new()))).is_err());
    devices.set_single(bare_device(Some(1001), "alice", Arc::clone(&registry))).unwrap();
    assert!(Arc::ptr_eq(&devices.registry_for(1001).unwrap(), &registry), "the same registry once open");
    assert_eq!(devices.all().len(), 1);
}
