//! Form bodies (`application/x-www-form-urlencoded`) and what the dashboard's forms turn into:
//! service specs, port lists, labels.

use std::collections::BTreeMap;

use shoal_types::{
    EndpointSpec, Placement, PortConfig, PortProtocol, PublishMode, ServiceMode, ServiceSpec,
};

use crate::DashboardError;

/// A decoded form: every field in order (a name may repeat).
#[derive(Debug, Clone, Default)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        let text = String::from_utf8_lossy(body);
        let dec = |s: &str| {
            urlencoding::decode(&s.replace('+', " "))
                .map(|c| c.into_owned())
                .unwrap_or_else(|_| s.to_string())
        };
        Form(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (dec(k), dec(v))
                })
                .collect(),
        )
    }

    /// The last value of `key`, or "".
    pub fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// What the "create service" form holds (kept to show it again with an error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceForm {
    pub name: String,
    pub image: String,
    pub mode: String,
    pub replicas: String,
    pub ports: String,
    pub constraints: String,
    pub env: String,
}

impl ServiceForm {
    pub fn from_form(f: &Form) -> ServiceForm {
        ServiceForm {
            name: f.get("name").trim().to_string(),
            image: f.get("image").trim().to_string(),
            mode: f.get("mode").trim().to_string(),
            replicas: f.get("replicas").trim().to_string(),
            ports: f.get("ports").to_string(),
            constraints: f.get("constraints").to_string(),
            env: f.get("env").to_string(),
        }
    }

    /// The service spec the form asks for; the control API validates the rest.
    pub fn to_spec(&self) -> Result<ServiceSpec, DashboardError> {
        if self.image.is_empty() {
            return Err(DashboardError::Form("an image is required".into()));
        }
        let mode = match self.mode.as_str() {
            "global" => ServiceMode::Global,
            "" | "replicated" => ServiceMode::Replicated {
                replicas: parse_replicas(if self.replicas.is_empty() {
                    "1"
                } else {
                    &self.replicas
                })?,
            },
            other => {
                return Err(DashboardError::Form(format!(
                    "unknown mode {other:?}: use replicated or global"
                )))
            }
        };
        let mut spec = ServiceSpec {
            name: self.name.clone(),
            mode,
            ..ServiceSpec::default()
        };
        spec.task_template.container_spec.image = normalize_image(&self.image);
        spec.task_template.container_spec.env = lines(&self.env);
        for e in &spec.task_template.container_spec.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(DashboardError::Form(format!(
                    "invalid environment entry {e:?}: use KEY=VALUE"
                )));
            }
        }
        let constraints = lines(&self.constraints);
        if !constraints.is_empty() {
            spec.task_template.placement = Some(Placement {
                constraints,
                ..Placement::default()
            });
        }
        let ports = parse_ports(&self.ports)?;
        if !ports.is_empty() {
            spec.endpoint_spec = Some(EndpointSpec {
                ports,
                ..EndpointSpec::default()
            });
        }
        Ok(spec)
    }
}

/// An image reference as the docker CLI sends it: a tag (`:latest`) when it has neither a tag
/// nor a digest. (A service whose spec says `nginx` would otherwise be rolled over by the first
/// `docker service update`/`scale`, whose spec says `nginx:latest`.)
pub fn normalize_image(image: &str) -> String {
    let image = image.trim();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.is_empty() || image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Non-empty trimmed lines (commas separate too, except in env values).
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A replica count (0 to 100 000).
pub fn parse_replicas(text: &str) -> Result<u64, DashboardError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n <= 100_000 => Ok(n),
        _ => Err(DashboardError::Form(format!(
            "invalid replica count {:?}: use a whole number from 0 to 100000",
            text.trim()
        ))),
    }
}

/// `8080:80`, `8080:80/udp`, `80` (a random published port), separated by commas, spaces or
/// lines; `mode=host` is not offered here.
pub fn parse_ports(text: &str) -> Result<Vec<PortConfig>, DashboardError> {
    let mut out = Vec::new();
    for item in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
    {
        let bad = || {
            DashboardError::Form(format!(
                "invalid port {item:?}: use PUBLISHED:TARGET[/tcp|udp], e.g. 8080:80"
            ))
        };
        let (ports, proto) = match item.split_once('/') {
            Some((p, proto)) => (p, proto.parse::<PortProtocol>().map_err(|_| bad())?),
            None => (item, PortProtocol::Tcp),
        };
        let (published, target) = match ports.split_once(':') {
            Some((p, t)) => (
                p.parse::<u16>().map_err(|_| bad())?,
                t.parse::<u16>().map_err(|_| bad())?,
            ),
            None => (0, ports.parse::<u16>().map_err(|_| bad())?),
        };
        if target == 0 {
            return Err(bad());
        }
        out.push(PortConfig {
            protocol: proto,
            target_port: u32::from(target),
            published_port: u32::from(published),
            publish_mode: PublishMode::Ingress,
            ..PortConfig::default()
        });
    }
    Ok(out)
}

/// `key=value` lines (a bare `key` has an empty value).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, DashboardError> {
    let mut out = BTreeMap::new();
    for line in lines(text) {
        let (k, v) = line.split_once('=').unwrap_or((line.as_str(), ""));
        let k = k.trim();
        if k.is_empty() {
            return Err(DashboardError::Form(format!(
                "invalid label {line:?}: use key=value"
            )));
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// Ports as a short text: `8080:80/tcp`.
pub fn ports_text(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| {
            if p.published_port == 0 {
                format!("{}/{}", p.target_port, p.protocol)
            } else {
                format!("{}:{}/{}", p.published_port, p.target_port, p.protocol)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_like_browsers_send_them() {
        let f = Form::parse(
            b"name=web&image=nginx%3Alatest&env=A%3D1%0D%0AB%3Dtwo+words&csrf=x&csrf=y",
        );
        assert_eq!(f.get("image"), "nginx:latest");
        assert_eq!(f.get("env"), "A=1\r\nB=two words");
        assert_eq!(f.get("csrf"), "y");
        assert_eq!(f.get("missing"), "");
    }

    #[test]
    fn the_create_form_becomes_a_spec() {
        let form = ServiceForm {
            name: "web".into(),
            image: "nginx".into(),
            mode: "replicated".into(),
            replicas: "2".into(),
            ports: "8001:80, 53:53/udp".into(),
            constraints: "node.role==worker\n\nnode.labels.zone==a\n".into(),
            env: "A=1\nB=two words\n".into(),
        };
        let spec = form.to_spec().unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 2 });
        assert_eq!(spec.task_template.container_spec.image, "nginx:latest");
        assert_eq!(
            spec.task_template.container_spec.env,
            vec!["A=1", "B=two words"]
        );
        assert_eq!(
            spec.task_template.placement.unwrap().constraints,
            vec!["node.role==worker", "node.labels.zone==a"]
        );
        let ports = spec.endpoint_spec.unwrap().ports;
        assert_eq!(ports.len(), 2);
        assert_eq!(
            (
                ports[0].published_port,
                ports[0].target_port,
                ports[0].protocol
            ),
            (8001, 80, PortProtocol::Tcp)
        );
        assert_eq!(ports[1].protocol, PortProtocol::Udp);
        assert_eq!(ports_text(&ports), "8001:80/tcp, 53:53/udp");

        let global = ServiceForm {
            image: "x".into(),
            mode: "global".into(),
            ..ServiceForm::default()
        }
        .to_spec()
        .unwrap();
        assert_eq!(global.mode, ServiceMode::Global);
        assert!(global.endpoint_spec.is_none() && global.task_template.placement.is_none());
    }

    #[test]
    fn bad_input_is_named_in_the_error() {
        let base = ServiceForm {
            image: "nginx".into(),
            ..ServiceForm::default()
        };
        assert!(ServiceForm {
            image: String::new(),
            ..base.clone()
        }
        .to_spec()
        .unwrap_err()
        .to_string()
        .contains("image is required"));
        let e = ServiceForm {
            replicas: "two".into(),
            ..base.clone()
        }
        .to_spec()
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"two\""), "{e}");
        let e = ServiceForm {
            ports: "80:http".into(),
            ..base.clone()
        }
        .to_spec()
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"80:http\""), "{e}");
        let e = ServiceForm {
            env: "NOVALUE".into(),
            ..base.clone()
        }
        .to_spec()
        .unwrap_err()
        .to_string();
        assert!(e.contains("NOVALUE"), "{e}");
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("8080:80/sctpx").is_err());
        assert_eq!(parse_ports("80").unwrap()[0].published_port, 0);
        assert!(parse_replicas("100001").is_err());
    }

    #[test]
    fn images_get_a_tag_like_the_cli_gives_them() {
        assert_eq!(normalize_image("nginx"), "nginx:latest");
        assert_eq!(normalize_image(" nginx:1.25 "), "nginx:1.25");
        assert_eq!(
            normalize_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_image("localhost:5000/app:v2"),
            "localhost:5000/app:v2"
        );
        assert_eq!(normalize_image("app@sha256:abc"), "app@sha256:abc");
    }

    #[test]
    fn labels_parse_from_lines() {
        let l = parse_labels("zone=a\nssd\n  rack = 7 \n").unwrap();
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert_eq!(l.get("ssd").map(String::as_str), Some(""));
        assert_eq!(l.get("rack").map(String::as_str), Some("7"));
        assert!(parse_labels("=x").is_err());
    }
}
