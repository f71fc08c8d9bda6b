use serde_json::{json, Value};

use super::*;
use crate::time::{format_go, parse_go, zero_time, SECOND};

fn ser<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

// ---------- docker CLI request bodies ----------

const SERVICE_CREATE: &str = r#"{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"nginx:latest","Init":false,"DNSConfig":{}},
 "Resources":{"Limits":{},"Reservations":{}},"Placement":{"Constraints":["node.role==worker"]},"ForceUpdate":0},
 "Mode":{"Replicated":{"Replicas":2}},
 "EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8001,"PublishMode":"ingress"}]}}"#;

const SWARM_INIT: &str = r#"{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"10.0.0.1","DataPathAddr":"",
 "DataPathPort":0,"ForceNewCluster":false,"Spec":{"Labels":null,"Orchestration":{},"Raft":{"ElectionTick":0,
 "HeartbeatTick":0},"Dispatcher":{},"CAConfig":{},"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}},
 "AutoLockManagers":false,"Availability":"","DefaultAddrPool":[],"SubnetSize":24}"#;

const NODE_UPDATE: &str = r#"{"Labels":{"foo":"bar"},"Role":"worker","Availability":"drain"}"#;

#[test]
fn service_create_body_round_trips() {
    let spec: ServiceSpec = serde_json::from_str(SERVICE_CREATE).unwrap();
    assert_eq!(spec.name, "web");
    assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 2 });
    assert_eq!(spec.mode.replicas(), Some(2));
    assert!(!spec.is_job());
    let c = &spec.task_template.container_spec;
    assert_eq!(c.image, "nginx:latest");
    assert_eq!(c.init, Some(false));
    assert_eq!(c.dns_config, Some(DnsConfig::default()));
    assert_eq!(
        spec.task_template.placement.as_ref().unwrap().constraints,
        vec!["node.role==worker"]
    );
    let ports = spec.ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].target_port, 80);
    assert_eq!(ports[0].published_port, 8001);
    assert_eq!(ports[0].protocol, PortProtocol::Tcp);
    assert_eq!(ports[0].publish_mode, PublishMode::Ingress);
    // Exact JSON round trip: the CLI body is already in canonical (omitempty) form.
    let orig: Value = serde_json::from_str(SERVICE_CREATE).unwrap();
    assert_eq!(ser(&spec), orig);
}

#[test]
fn swarm_init_body_parses() {
    let req: InitRequest = serde_json::from_str(SWARM_INIT).unwrap();
    assert_eq!(req.listen_addr, "0.0.0.0:2377");
    assert_eq!(req.advertise_addr, "10.0.0.1");
    assert_eq!(req.availability, NodeAvailability::Active); // "" => default
    assert_eq!(req.subnet_size, 24);
    assert!(req.spec.labels.is_empty());
    assert_eq!(req.spec.raft.election_tick, 0);
    let merged = req.spec.merged_with_defaults();
    assert_eq!(merged, SwarmSpec::default_spec());
    // Re-serialises with the right types.
    let v = ser(&req);
    assert_eq!(v["Spec"]["Raft"]["ElectionTick"], json!(0));
    assert_eq!(
        v["Spec"]["EncryptionConfig"]["AutoLockManagers"],
        json!(false)
    );
    assert_eq!(v["Availability"], json!("active"));
    assert_eq!(v["Spec"]["Labels"], json!({}));
}

#[test]
fn node_update_body_round_trips() {
    let spec: NodeSpec = serde_json::from_str(NODE_UPDATE).unwrap();
    assert_eq!(spec.role, NodeRole::Worker);
    assert_eq!(spec.availability, NodeAvailability::Drain);
    assert_eq!(spec.labels.get("foo").map(String::as_str), Some("bar"));
    let orig: Value = serde_json::from_str(NODE_UPDATE).unwrap();
    assert_eq!(ser(&spec), orig);
    let promote: NodeSpec =
        serde_json::from_str(r#"{"Labels":{},"Role":"manager","Availability":"active"}"#).unwrap();
    assert_eq!(promote.role, NodeRole::Manager);
    assert!(serde_json::from_str::<NodeSpec>(r#"{"Role":"boss"}"#).is_err());
}

#[test]
fn minimal_and_null_bodies_parse() {
    let s: ServiceSpec = serde_json::from_str("{}").unwrap();
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
    let s: ServiceSpec = serde_json::from_str(
        r#"{"Name":"x","Labels":null,"TaskTemplate":{"ContainerSpec":null,"Networks":null},"Mode":null,"Unknown":42}"#,
    )
    .unwrap();
    assert_eq!(s.mode, ServiceMode::Replicated { replicas: 1 });
    assert!(s.labels.is_empty());
    let v = ser(&s);
    assert_eq!(v["TaskTemplate"]["ContainerSpec"], json!({}));
    let _: Node = serde_json::from_str("{}").unwrap();
    let _: Task = serde_json::from_str("{}").unwrap();
    let _: Cluster = serde_json::from_str("{}").unwrap();
    let _: Network = serde_json::from_str("{}").unwrap();
    let _: Secret = serde_json::from_str(r#"{"Spec":{"Name":"s","Data":"aGk="}}"#).unwrap();
    let _: Config =
        serde_json::from_str(r#"{"Spec":{"Name":"c","Labels":null,"Data":"aGk="}}"#).unwrap();
}

#[test]
fn mode_shapes() {
    let cases = [
        (
            json!({"Replicated":{"Replicas":2}}),
            ServiceMode::Replicated { replicas: 2 },
            json!({"Replicated":{"Replicas":2}}),
        ),
        (
            json!({"Replicated":{}}),
            ServiceMode::Replicated { replicas: 1 },
            json!({"Replicated":{"Replicas":1}}),
        ),
        (
            json!({}),
            ServiceMode::Replicated { replicas: 1 },
            json!({"Replicated":{"Replicas":1}}),
        ),
        (
            json!({"Global":{}}),
            ServiceMode::Global,
            json!({"Global":{}}),
        ),
        (
            json!({"GlobalJob":{}}),
            ServiceMode::GlobalJob,
            json!({"GlobalJob":{}}),
        ),
        (
            json!({"ReplicatedJob":{"MaxConcurrent":2,"TotalCompletions":5}}),
            ServiceMode::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 5,
            },
            json!({"ReplicatedJob":{"MaxConcurrent":2,"TotalCompletions":5}}),
        ),
        (
            json!({"ReplicatedJob":{"TotalCompletions":3}}),
            ServiceMode::ReplicatedJob {
                max_concurrent: 3,
                total_completions: 3,
            },
            json!({"ReplicatedJob":{"MaxConcurrent":3,"TotalCompletions":3}}),
        ),
        (
            json!({"Replicated":null,"Global":{}}),
            ServiceMode::Global,
            json!({"Global":{}}),
        ),
    ];
    for (input, mode, out) in cases {
        let m: ServiceMode = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(m, mode, "{input}");
        assert_eq!(ser(&m), out, "{input}");
    }
    assert!(ServiceMode::GlobalJob.is_job() && ServiceMode::GlobalJob.is_global());
    assert_eq!(ServiceMode::Global.replicas(), None);
    assert_eq!(
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 4
        }
        .replicas(),
        Some(4)
    );
    assert!(!ServiceMode::Global.same_kind(&ServiceMode::GlobalJob));
    assert_eq!(
        ServiceMode::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1
        }
        .name(),
        "replicated job"
    );
}

#[test]
fn service_output_types() {
    let spec: ServiceSpec = serde_json::from_str(SERVICE_CREATE).unwrap();
    let mut svc = Service {
        id: new_id(),
        meta: Meta {
            version: Version::new(17),
            created_at: parse_go("2025-01-02T03:04:05.5Z").unwrap(),
            updated_at: zero_time(),
        },
        spec: with_defaults(&spec),
        ..Default::default()
    };
    svc.endpoint.spec = svc.spec.endpoint_spec.clone().unwrap();
    svc.endpoint.ports = svc.endpoint.spec.ports.clone();
    let v = ser(&svc);
    assert_eq!(v["Version"], json!({"Index": 17}));
    assert!(v["Version"]["Index"].is_u64());
    assert_eq!(v["CreatedAt"], json!("2025-01-02T03:04:05.5Z"));
    assert_eq!(v["UpdatedAt"], json!("0001-01-01T00:00:00Z"));
    let cs = &v["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(cs["StopGracePeriod"], json!(10_000_000_000i64));
    assert!(cs["StopGracePeriod"].is_i64());
    assert_eq!(cs["DNSConfig"], json!({}));
    assert_eq!(
        v["Spec"]["TaskTemplate"]["RestartPolicy"],
        json!({"Condition":"any","Delay":5_000_000_000i64,"MaxAttempts":0})
    );
    assert_eq!(
        v["Spec"]["TaskTemplate"]["Resources"],
        json!({"Limits":{},"Reservations":{}})
    );
    assert_eq!(v["Spec"]["TaskTemplate"]["ForceUpdate"], json!(0));
    let uc = json!({"Parallelism":1,"FailureAction":"pause","Monitor":5_000_000_000i64,"MaxFailureRatio":0.0,"Order":"stop-first"});
    assert_eq!(v["Spec"]["UpdateConfig"], uc);
    assert_eq!(v["Spec"]["RollbackConfig"], uc);
    assert_eq!(v["Spec"]["EndpointSpec"]["Mode"], json!("vip"));
    assert_eq!(v["Endpoint"]["Ports"][0]["PublishedPort"], json!(8001));
    assert!(v.get("PreviousSpec").is_none());
    assert!(v.get("UpdateStatus").is_none());
    assert!(v.get("ServiceStatus").is_none());
    // Round trip of the full object.
    let back: Service = serde_json::from_value(v).unwrap();
    assert_eq!(back, svc);
}

#[test]
fn with_defaults_keeps_set_fields() {
    let spec: ServiceSpec = serde_json::from_value(json!({
        "Name":"w","TaskTemplate":{"ContainerSpec":{"Image":"a","StopGracePeriod":1},
        "RestartPolicy":{"Condition":"none"}},
        "UpdateConfig":{"Parallelism":0,"Order":"start-first","FailureAction":"rollback"},
        "EndpointSpec":{"Mode":"dnsrr"}
    }))
    .unwrap();
    let d = with_defaults(&spec);
    assert_eq!(d.task_template.container_spec.stop_grace_period, Some(1));
    let rp = d.task_template.restart_policy.unwrap();
    assert_eq!(rp.condition, Some(RestartCondition::None));
    assert_eq!(rp.delay, Some(5 * SECOND));
    let uc = d.update_config.unwrap();
    assert_eq!(
        (uc.parallelism, uc.order, uc.failure_action, uc.monitor),
        (
            0,
            UpdateOrder::StartFirst,
            FailureAction::Rollback,
            5 * SECOND
        )
    );
    assert_eq!(d.endpoint_spec.unwrap().mode, ResolutionMode::Dnsrr);
    assert_eq!(with_defaults(&with_defaults(&spec)), with_defaults(&spec));
}

#[test]
fn container_spec_all_keys_round_trip() {
    let full = json!({
        "Image":"nginx","Labels":{"a":"b"},"Command":["sh"],"Args":["-c","x"],"Hostname":"h","Env":["A=1"],
        "Dir":"/w","User":"1000","Groups":["wheel"],"Privileges":{"NoNewPrivileges":true},"Init":true,
        "StopSignal":"SIGTERM","TTY":true,"OpenStdin":true,"ReadOnly":true,
        "Mounts":[{"Type":"bind","Source":"/a","Target":"/b","ReadOnly":true,"BindOptions":{"Propagation":"rprivate"}}],
        "StopGracePeriod":3000000000i64,
        "Healthcheck":{"Test":["CMD","true"],"Interval":1,"Timeout":2,"StartPeriod":3,"StartInterval":4,"Retries":5},
        "Hosts":["1.2.3.4 h"],"DNSConfig":{"Nameservers":["8.8.8.8"],"Search":["x"],"Options":["ndots:1"]},
        "Secrets":[{"File":{"Name":"s","UID":"0","GID":"0","Mode":292},"SecretID":"id","SecretName":"s"}],
        "Configs":[{"File":{"Name":"/c","UID":"0","GID":"0","Mode":292},"ConfigID":"cid","ConfigName":"c"}],
        "Isolation":"default","Sysctls":{"net.ipv4.ip_forward":"1"},"CapabilityAdd":["NET_ADMIN"],
        "CapabilityDrop":["MKNOD"],"Ulimits":[{"Name":"nofile","Hard":10,"Soft":5}],"OomScoreAdj":-5
    });
    let c: ContainerSpec = serde_json::from_value(full.clone()).unwrap();
    assert_eq!(ser(&c), full);
    // Empty spec serialises as {} (non-null).
    assert_eq!(ser(&ContainerSpec::default()), json!({}));
    assert_eq!(
        ser(&TaskSpec::default()),
        json!({"ContainerSpec":{},"ForceUpdate":0})
    );
}

#[test]
fn task_output_shape() {
    let mut t = Task {
        id: new_id(),
        service_id: new_id(),
        slot: 0,
        spec: TaskSpec::default(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(
            TaskState::Pending,
            parse_go("2025-01-02T03:04:05Z").unwrap(),
        ),
        service_annotations: Some(Annotations {
            name: "web".into(),
            labels: Labels::new(),
        }),
        ..Default::default()
    };
    let v = ser(&t);
    assert!(v.get("Slot").is_none(), "Slot omitted when 0");
    assert!(v.get("NodeID").is_none());
    assert_eq!(v["Spec"]["ContainerSpec"], json!({}));
    assert_eq!(v["DesiredState"], json!("running"));
    assert_eq!(v["Status"]["State"], json!("pending"));
    assert_eq!(v["Status"]["Timestamp"], json!("2025-01-02T03:04:05Z"));
    assert_eq!(v["Status"]["PortStatus"], json!({}));
    assert_eq!(v["Labels"], json!({}));
    t.slot = 3;
    t.node_id = "n1".into();
    t.status.container_status = Some(ContainerStatus {
        container_id: "c".repeat(64),
        pid: 42,
        exit_code: 0,
    });
    let v = ser(&t);
    assert_eq!(v["Slot"], json!(3));
    assert_eq!(v["Status"]["ContainerStatus"]["PID"], json!(42));
    assert_eq!(v["Status"]["ContainerStatus"]["ExitCode"], json!(0));
    assert_eq!(t.display_name(), "web.3");
    assert_eq!(t.container_name(), format!("web.3.{}", t.id));
    t.slot = 0;
    assert_eq!(t.container_name(), format!("web.n1.{}", t.id));
    let back: Task = serde_json::from_value(ser(&t)).unwrap();
    assert_eq!(back, t);
}

#[test]
fn node_output_shape() {
    let n = Node {
        id: new_id(),
        spec: NodeSpec {
            role: NodeRole::Manager,
            ..Default::default()
        },
        description: NodeDescription {
            hostname: "m1".into(),
            platform: Platform {
                architecture: "x86_64".into(),
                os: "linux".into(),
            },
            resources: NodeResources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 1 << 33,
                ..Default::default()
            },
            engine: EngineDescription {
                engine_version: "28.2.2".into(),
                ..Default::default()
            },
            ..Default::default()
        },
        status: NodeStatus {
            state: NodeState::Ready,
            addr: "10.0.0.1".into(),
            ..Default::default()
        },
        manager_status: Some(ManagerStatus {
            leader: true,
            reachability: Reachability::Reachable,
            addr: "10.0.0.1:2377".into(),
        }),
        ..Default::default()
    };
    let v = ser(&n);
    assert_eq!(
        v["Spec"],
        json!({"Labels":{},"Role":"manager","Availability":"active"})
    );
    assert_eq!(
        v["Description"]["Platform"],
        json!({"Architecture":"x86_64","OS":"linux"})
    );
    assert_eq!(
        v["Description"]["Resources"]["NanoCPUs"],
        json!(4_000_000_000i64)
    );
    assert_eq!(v["Status"], json!({"State":"ready","Addr":"10.0.0.1"}));
    assert_eq!(
        v["ManagerStatus"],
        json!({"Leader":true,"Reachability":"reachable","Addr":"10.0.0.1:2377"})
    );
    assert_eq!(n.display_name(), "m1");
    let worker = Node {
        manager_status: None,
        ..n.clone()
    };
    assert!(ser(&worker).get("ManagerStatus").is_none());
    assert_eq!(serde_json::from_value::<Node>(v).unwrap(), n);
}

#[test]
fn cluster_public_and_info() {
    let c = Cluster {
        id: new_id(),
        join_tokens: JoinTokens {
            worker: "SWMTKN-1-w".into(),
            manager: "SWMTKN-1-m".into(),
        },
        store_only: Some(ClusterSecrets {
            root_ca_key_pem: "KEY".into(),
            unlock_key: "SWMKEY-1-x".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The store's JSON keeps the secrets.
    let stored = serde_json::to_string(&c).unwrap();
    assert!(stored.contains("KEY"));
    let back: Cluster = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, c);
    // The API view does not.
    let v = ser(&c.public());
    assert!(v.get("ShoalStoreOnly").is_none());
    assert!(!v.to_string().contains("KEY"));
    assert_eq!(v["JoinTokens"]["Worker"], json!("SWMTKN-1-w"));
    assert_eq!(v["DefaultAddrPool"], json!(["10.0.0.0/8"]));
    assert_eq!(v["SubnetSize"], json!(24));
    assert_eq!(v["DataPathPort"], json!(4789));
    assert_eq!(v["RootRotationInProgress"], json!(false));
    assert_eq!(v["TLSInfo"], json!({}));
    assert_eq!(
        v["Spec"],
        json!({
            "Name":"default","Labels":{},
            "Orchestration":{"TaskHistoryRetentionLimit":5},
            "Raft":{"SnapshotInterval":10000,"KeepOldSnapshots":0,"LogEntriesForSlowFollowers":500,"ElectionTick":10,"HeartbeatTick":1},
            "Dispatcher":{"HeartbeatPeriod":1_000_000_000i64},
            "CAConfig":{"NodeCertExpiry":7_776_000_000_000_000i64},
            "TaskDefaults":{},
            "EncryptionConfig":{"AutoLockManagers":false}
        })
    );
    let info = ser(&c.info());
    assert!(info.get("JoinTokens").is_none());
    assert!(info.get("ShoalStoreOnly").is_none());
    assert_eq!(info["ID"], json!(c.id));
}

#[test]
fn kinds_and_any_object() {
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["cluster", "node", "service", "task", "network", "secret", "config"]
    );
    assert_eq!("task".parse::<Kind>().unwrap(), Kind::Task);
    let mut svc = Service {
        id: "abc".into(),
        ..Default::default()
    };
    svc.meta.version = Version::new(9);
    let any: AnyObject = svc.clone().into();
    assert_eq!(any.kind(), Kind::Service);
    assert_eq!(any.id(), "abc");
    assert_eq!(any.version(), Version::new(9));
    assert_eq!(any.downcast_ref::<Service>(), Some(&svc));
    assert!(any.downcast_ref::<Task>().is_none());
    let json = serde_json::to_string(&any).unwrap();
    assert!(
        json.starts_with(r#"{"service":{"ID":"abc","Version":{"Index":9}"#),
        "{json}"
    );
    let any2: AnyObject = serde_json::from_str(&json).unwrap();
    assert_eq!(any2, any);
    assert_eq!(Service::try_from(any.clone()).unwrap(), svc);
    let err = Node::try_from(any).unwrap_err();
    assert_eq!(
        err,
        WrongKind {
            expected: Kind::Node,
            found: Kind::Service
        }
    );
    fn generic<T: Object>(o: &T) -> (Kind, String) {
        (T::KIND, o.id().to_string())
    }
    assert_eq!(generic(&svc), (Kind::Service, "abc".into()));
    for k in Kind::ALL {
        let a = match k {
            Kind::Cluster => Cluster::default().into_any(),
            Kind::Node => Node::default().into_any(),
            Kind::Service => Service::default().into_any(),
            Kind::Task => Task::default().into_any(),
            Kind::Network => Network::default().into_any(),
            Kind::Secret => Secret::default().into_any(),
            Kind::Config => Config::default().into_any(),
        };
        assert_eq!(a.kind(), k);
        let back: AnyObject = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}

// ---------- IDs and tokens ----------

#[test]
fn ids_are_25_char_base36() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let id = new_id();
        assert_eq!(id.len(), 25, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
            "{id}"
        );
        assert!(ids::is_id(&id));
        assert!(seen.insert(id));
    }
    // Extremes of the 17-byte space still give 25 chars.
    assert_eq!(ids::id_from_bytes([0u8; 17]).len(), 25);
    assert_eq!(ids::id_from_bytes([0xffu8; 17]).len(), 25);
}

#[test]
fn base36_matches_known_values() {
    assert_eq!(ids::base36(&[]), "0");
    assert_eq!(ids::base36(&[0, 0]), "0");
    assert_eq!(ids::base36(&[35]), "z");
    assert_eq!(ids::base36(&[36]), "10");
    assert_eq!(ids::base36(&[0x01, 0x00]), "74"); // 256 = 7*36+4
    assert_eq!(ids::base36(&u64::MAX.to_be_bytes()), "3w5e11264sgsf");
    // 2^135 (high bit of 17 bytes) in base 36 has 27 digits.
    let mut p = [0u8; 17];
    p[0] = 0x80;
    assert_eq!(ids::base36(&p).len(), 27);
}

#[test]
fn join_token_format() {
    let digest = [0xabu8; 32];
    let secret = [1u8; 16];
    let t = join_token(&digest, &secret);
    let parts: Vec<&str> = t.split('-').collect();
    assert_eq!(parts.len(), 4, "{t}");
    assert_eq!(parts[0], "SWMTKN");
    assert_eq!(parts[1], "1");
    assert_eq!(parts[2].len(), 50);
    assert_eq!(parts[3].len(), 25);
    let p = ids::parse_join_token(&t).unwrap();
    assert_eq!(p.ca_digest, parts[2]);
    // Small numbers are zero-padded.
    let t0 = join_token(&[0u8; 32], &[0u8; 16]);
    assert_eq!(
        t0,
        format!("SWMTKN-1-{}-{}", "0".repeat(50), "0".repeat(25))
    );
    assert!(ids::parse_join_token("SWMTKN-1-abc-def").is_none());
    let t2 = join_token(&digest, &ids::new_token_secret());
    assert_ne!(t2, join_token(&digest, &ids::new_token_secret()));
}

#[test]
fn unlock_key_format() {
    let k = unlock_key(&[0u8; 32]);
    assert_eq!(k, format!("SWMKEY-1-{}", "A".repeat(43)));
    let secret = ids::new_unlock_secret();
    let k = unlock_key(&secret);
    assert!(k.starts_with("SWMKEY-1-"));
    assert_eq!(ids::parse_unlock_key(&k).unwrap(), secret.to_vec());
    assert_eq!(unlock_key(&[]), "");
    assert_eq!(ids::base64_std(b"hi"), "aGk=");
    assert_eq!(ids::base64_std(b"hello!"), "aGVsbG8h");
    assert_eq!(ids::base64_decode("aGk=").unwrap(), b"hi");
}

// ---------- task states ----------

#[test]
fn task_state_order_and_strings() {
    let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "new",
            "allocated",
            "pending",
            "assigned",
            "accepted",
            "preparing",
            "ready",
            "starting",
            "running",
            "complete",
            "shutdown",
            "failed",
            "rejected",
            "remove",
            "orphaned"
        ]
    );
    for w in TaskState::ALL.windows(2) {
        assert!(w[0] < w[1]);
        assert!(w[0].value() < w[1].value());
    }
    assert_eq!(TaskState::Pending.value(), 64);
    assert_eq!(TaskState::Running.value(), 512);
    assert_eq!(TaskState::Orphaned.value(), 832);
    assert_eq!(TaskState::from_value(640), Some(TaskState::Shutdown));
    assert!(!TaskState::Running.is_terminal());
    assert!(TaskState::Complete.is_terminal() && TaskState::Rejected.is_terminal());
    assert_eq!(ser(&TaskState::Rejected), json!("rejected"));
    assert_eq!(
        serde_json::from_value::<TaskState>(json!("starting")).unwrap(),
        TaskState::Starting
    );
    assert!(serde_json::from_value::<TaskState>(json!("bogus")).is_err());
    assert_eq!(
        TaskState::Assigned.default_message(),
        "scheduler assigned task to node"
    );
}

// ---------- time ----------

#[test]
fn go_time_formatting() {
    assert_eq!(format_go(&zero_time()), "0001-01-01T00:00:00Z");
    let t = parse_go("2025-01-02T03:04:05.123456789Z").unwrap();
    assert_eq!(format_go(&t), "2025-01-02T03:04:05.123456789Z");
    assert_eq!(
        format_go(&parse_go("2025-01-02T03:04:05.120Z").unwrap()),
        "2025-01-02T03:04:05.12Z"
    );
    assert_eq!(
        format_go(&parse_go("2025-01-02T03:04:05.000Z").unwrap()),
        "2025-01-02T03:04:05Z"
    );
    // Offsets are accepted and normalised to UTC.
    assert_eq!(
        format_go(&parse_go("2025-01-02T05:04:05+02:00").unwrap()),
        "2025-01-02T03:04:05Z"
    );
    let m: Meta =
        serde_json::from_value(json!({"Version":{"Index":3},"CreatedAt":"0001-01-01T00:00:00Z"}))
            .unwrap();
    assert!(time::is_zero_time(&m.created_at) && time::is_zero_time(&m.updated_at));
    assert!(serde_json::from_value::<Meta>(json!({"CreatedAt":"yesterday"})).is_err());
    let us = UpdateStatus {
        state: Some(UpdateState::RollbackStarted),
        started_at: Some(t),
        ..Default::default()
    };
    assert_eq!(
        ser(&us),
        json!({"State":"rollback_started","StartedAt":"2025-01-02T03:04:05.123456789Z"})
    );
    assert_eq!(
        serde_json::from_value::<UpdateStatus>(ser(&us)).unwrap(),
        us
    );
}

#[test]
fn task_spec_equality_is_dirty_check() {
    let a: ServiceSpec = serde_json::from_str(SERVICE_CREATE).unwrap();
    let mut b = a.clone();
    assert_eq!(a.task_template, b.task_template);
    b.task_template.force_update += 1;
    assert_ne!(a.task_template, b.task_template);
    let mut c = a.clone();
    c.task_template.container_spec.image = "nginx:1.27".into();
    assert_ne!(a.task_template, c.task_template);
}

#[test]
fn network_secret_config_shapes() {
    let n: Network = serde_json::from_value(json!({
        "ID":"n","Version":{"Index":1},"CreatedAt":"2025-01-02T03:04:05Z","UpdatedAt":"2025-01-02T03:04:05Z",
        "Spec":{"Name":"ingress","Labels":{},"DriverConfiguration":{"Name":"overlay"},"Ingress":true,
                "IPAMOptions":{"Driver":{"Name":"default"},"Configs":[{"Subnet":"10.0.0.0/24","Gateway":"10.0.0.1"}]},"Scope":"swarm"},
        "DriverState":{"Name":"overlay","Options":{"com.docker.network.driver.overlay.vxlanid_list":"4096"}}
    }))
    .unwrap();
    assert!(n.spec.ingress);
    let v = ser(&n);
    assert_eq!(v["Spec"]["Ingress"], json!(true));
    assert!(v["Spec"].get("Attachable").is_none());
    assert_eq!(
        v["Spec"]["IPAMOptions"]["Configs"][0]["Subnet"],
        json!("10.0.0.0/24")
    );
    let s = Secret {
        id: "s".into(),
        spec: SecretSpec {
            name: "pw".into(),
            data: "aGk=".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(ser(&s)["Spec"]["Data"], json!("aGk="));
    assert!(ser(&s.public())["Spec"].get("Data").is_none());
}
