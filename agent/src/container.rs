//! Container operations over the engine's API, on raw JSON documents: a
//! faithful recreate must carry every field the engine returns, including
//! the ones a typed model does not know about.

use std::path::Path;

use http::Method;
use serde_json::{Value, json};

use crate::engine::Connected;
use crate::rawhttp;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{call}: HTTP {status}: {message}")]
    Engine {
        call: String,
        status: u16,
        message: String,
    },
    #[error("cannot reach the engine: {0}")]
    Unreachable(String),
    #[error("refused: {}", .0.join("; "))]
    Refused(Vec<String>),
    #[error(
        "the engine refused to create the new container: {message}\nthe exact create request was:\n{request}"
    )]
    CreateFailed { message: String, request: String },
    #[error("{0}")]
    Verify(String),
}

/// The string at a JSON pointer of an engine document, or "".
pub fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(|s| s.as_str())
        .unwrap_or_default()
}

/// The strings of the array at a JSON pointer (`Env`, `VolumesFrom`, ...),
/// or none.
pub fn strings_at(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// Raw engine calls for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Api<'a> {
    conn: &'a Connected,
}

fn engine_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

impl<'a> Api<'a> {
    pub fn new(conn: &'a Connected) -> Self {
        Api { conn }
    }

    pub fn connected(&self) -> &Connected {
        self.conn
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, bytes::Bytes), ContainerError> {
        self.call_at(&self.conn.api_prefix, method, path, body)
            .await
    }

    /// A call under `prefix`: the compat API's or Podman's own (libpod).
    async fn call_at(
        &self,
        prefix: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, bytes::Bytes), ContainerError> {
        let full = format!("{prefix}{path}");
        rawhttp::request(Path::new(&self.conn.facts.socket), method, &full, body)
            .await
            .map_err(|e| ContainerError::Unreachable(e.to_string()))
    }

    async fn expect(
        &self,
        call: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        ok: &[u16],
    ) -> Result<bytes::Bytes, ContainerError> {
        let (status, bytes) = self.call(method, path, body).await?;
        if ok.contains(&status) || (200..300).contains(&status) {
            return Ok(bytes);
        }
        if status == 404 {
            return Err(ContainerError::NotFound(format!(
                "{call}: {}",
                engine_message(&bytes)
            )));
        }
        Err(ContainerError::Engine {
            call: call.to_string(),
            status,
            message: engine_message(&bytes),
        })
    }

    pub async fn inspect(&self, id: &str) -> Result<Value, ContainerError> {
        self.inspect_at(&self.conn.api_prefix, "inspect", id).await
    }

    /// Podman's own inspect document, which holds what the compat one
    /// leaves out (`Config.CreateCommand`).
    pub async fn libpod_inspect(&self, id: &str) -> Result<Value, ContainerError> {
        self.inspect_at(&self.conn.libpod_prefix, "libpod inspect", id)
            .await
    }

    async fn inspect_at(
        &self,
        prefix: &str,
        call: &str,
        id: &str,
    ) -> Result<Value, ContainerError> {
        let path = format!("/containers/{}/json", encode(id));
        let (status, bytes) = self.call_at(prefix, Method::GET, &path, None).await?;
        match status {
            200 => serde_json::from_slice(&bytes).map_err(|e| ContainerError::Engine {
                call: call.into(),
                status,
                message: e.to_string(),
            }),
            404 => Err(ContainerError::NotFound(id.to_string())),
            _ => Err(ContainerError::Engine {
                call: format!("{call} {id}"),
                status,
                message: engine_message(&bytes),
            }),
        }
    }

    async fn image_inspect(&self, reference: &str) -> Result<Value, ContainerError> {
        let bytes = self
            .expect(
                "image inspect",
                Method::GET,
                &format!("/images/{}/json", encode(reference)),
                None,
                &[],
            )
            .await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The image ID a reference (tag or ID) resolves to now.
    pub async fn image_id(&self, reference: &str) -> Result<String, ContainerError> {
        Ok(str_at(&self.image_inspect(reference).await?, "/Id").to_string())
    }

    /// The environment an image gives its containers (`Config.Env`).
    pub async fn image_env(&self, reference: &str) -> Result<Vec<String>, ContainerError> {
        Ok(strings_at(
            &self.image_inspect(reference).await?,
            "/Config/Env",
        ))
    }

    /// Every container, as the list endpoint shows them.
    pub async fn list(&self) -> Result<Vec<Value>, ContainerError> {
        let bytes = self
            .expect("list", Method::GET, "/containers/json?all=1", None, &[])
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ContainerError::Engine {
            call: "list".into(),
            status: 200,
            message: e.to_string(),
        })
    }

    /// Stops with the container's own stop signal (the engine applies it)
    /// and timeout; 304 (already stopped) is success.
    pub async fn stop(&self, id: &str, timeout_secs: Option<i64>) -> Result<(), ContainerError> {
        let query = timeout_secs.map(|t| format!("?t={t}")).unwrap_or_default();
        self.expect(
            "stop",
            Method::POST,
            &format!("/containers/{}/stop{query}", encode(id)),
            None,
            &[304],
        )
        .await?;
        Ok(())
    }

    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        self.expect(
            "start",
            Method::POST,
            &format!("/containers/{}/start", encode(id)),
            None,
            &[304],
        )
        .await?;
        Ok(())
    }

    pub async fn rename(&self, id: &str, name: &str) -> Result<(), ContainerError> {
        self.expect(
            "rename",
            Method::POST,
            &format!("/containers/{}/rename?name={}", encode(id), encode(name)),
            None,
            &[],
        )
        .await?;
        Ok(())
    }

    pub async fn set_restart_policy(&self, id: &str, policy: &Value) -> Result<(), ContainerError> {
        let body = json!({ "RestartPolicy": policy });
        self.expect(
            "update",
            Method::POST,
            &format!("/containers/{}/update", encode(id)),
            Some(&body),
            &[],
        )
        .await?;
        Ok(())
    }

    pub async fn connect(
        &self,
        network: &str,
        id: &str,
        endpoint: &Value,
    ) -> Result<(), ContainerError> {
        let body = json!({ "Container": id, "EndpointConfig": endpoint });
        self.expect(
            "network connect",
            Method::POST,
            &format!("/networks/{}/connect", encode(network)),
            Some(&body),
            &[],
        )
        .await?;
        Ok(())
    }

    pub async fn disconnect(&self, network: &str, id: &str) -> Result<(), ContainerError> {
        let body = json!({ "Container": id, "Force": true });
        self.expect(
            "network disconnect",
            Method::POST,
            &format!("/networks/{}/disconnect", encode(network)),
            Some(&body),
            &[],
        )
        .await?;
        Ok(())
    }

    /// Creates a container; a refusal carries the exact request.
    pub async fn create(&self, name: &str, body: &Value) -> Result<String, ContainerError> {
        let (status, bytes) = self
            .call(
                Method::POST,
                &format!("/containers/create?name={}", encode(name)),
                Some(body),
            )
            .await?;
        if (200..300).contains(&status) {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(id) = value.get("Id").and_then(|i| i.as_str()) {
                return Ok(id.to_string());
            }
        }
        Err(ContainerError::CreateFailed {
            message: format!("HTTP {status}: {}", engine_message(&bytes)),
            request: serde_json::to_string_pretty(body).unwrap_or_default(),
        })
    }

    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        match self
            .expect(
                "remove",
                Method::DELETE,
                &format!("/containers/{}?force=1", encode(id)),
                None,
                &[],
            )
            .await
        {
            Err(ContainerError::NotFound(_)) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Changes in the writable layer (`docker diff`).
    pub async fn changes(&self, id: &str) -> Result<Vec<(String, i64)>, ContainerError> {
        let bytes = self
            .expect(
                "changes",
                Method::GET,
                &format!("/containers/{}/changes", encode(id)),
                None,
                &[],
            )
            .await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    c.get("Path")?.as_str()?.to_string(),
                    c.get("Kind")?.as_i64()?,
                ))
            })
            .collect())
    }

    /// Runs the container's healthcheck once through Podman's own API; the
    /// result goes into the health state inspect shows, as a scheduled run's
    /// would. Returns the status of this one run.
    pub async fn run_healthcheck(&self, id: &str) -> Result<String, ContainerError> {
        let prefix = self.conn.libpod_prefix.clone();
        let path = format!("/containers/{}/healthcheck", encode(id));
        let (status, bytes) = self.call_at(&prefix, Method::GET, &path, None).await?;
        match status {
            200 => Ok(serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("Status")?.as_str().map(String::from))
                .unwrap_or_default()),
            404 => Err(ContainerError::NotFound(id.to_string())),
            _ => Err(ContainerError::Engine {
                call: "healthcheck run".into(),
                status,
                message: engine_message(&bytes),
            }),
        }
    }

    /// Runs `argv` inside the container and returns (exit code, output).
    pub async fn exec(&self, id: &str, argv: &[String]) -> Result<(i64, String), ContainerError> {
        let create = json!({ "Cmd": argv, "AttachStdout": true, "AttachStderr": true });
        let bytes = self
            .expect(
                "exec create",
                Method::POST,
                &format!("/containers/{}/exec", encode(id)),
                Some(&create),
                &[],
            )
            .await?;
        let exec: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let exec_id = exec
            .get("Id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let start = json!({ "Detach": false, "Tty": false });
        let output = self
            .expect(
                "exec start",
                Method::POST,
                &format!("/exec/{exec_id}/start"),
                Some(&start),
                &[],
            )
            .await?;
        let inspect = self
            .expect(
                "exec inspect",
                Method::GET,
                &format!("/exec/{exec_id}/json"),
                None,
                &[],
            )
            .await?;
        let inspect: Value = serde_json::from_slice(&inspect).unwrap_or(Value::Null);
        let code = inspect
            .get("ExitCode")
            .and_then(|c| c.as_i64())
            .unwrap_or(-1);
        Ok((code, demux(&output)))
    }
}

/// The engine's multiplexed stdout/stderr stream, as text.
fn demux(raw: &[u8]) -> String {
    let mut out = Vec::new();
    let mut rest = raw;
    while rest.len() >= 8 && rest[0] <= 2 && rest[1..4] == [0, 0, 0] {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        out.extend_from_slice(&rest[8..end]);
        rest = &rest[end..];
    }
    if out.is_empty() {
        out.extend_from_slice(raw);
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Api<'_> {
    /// The last lines of a container's output, for failure reports.
    pub async fn logs_tail(&self, id: &str, lines: u32) -> String {
        match self
            .call(
                Method::GET,
                &format!(
                    "/containers/{}/logs?stdout=1&stderr=1&tail={lines}",
                    encode(id)
                ),
                None,
            )
            .await
        {
            Ok((200, bytes)) => demux(&bytes).trim().to_string(),
            _ => String::new(),
        }
    }
}
