//! A small WebDriver client for the dashboard's browser tests: Debian's
//! `chromedriver` driving headless `chromium`, over the W3C wire protocol
//! with `ureq` (already a dependency here). The Rust WebDriver crates were
//! checked and not taken: fantoccini pulls the `webdriver` crate and with
//! it http 0.2 (a second major of http, which `scripts/check-deps.sh`
//! refuses), thirtyfour a second HTTP client (reqwest) and serde_json's
//! `preserve_order` for the whole workspace. The handful of endpoints used
//! here are each one request.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    url: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub artifacts: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub fn start(artifacts: &Path) -> Result<Self> {
        std::fs::create_dir_all(artifacts)?;
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (Debian package chromium-driver)")?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{url}/status")).call().is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on {url}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::Builder::new()
            .prefix("kiln-chromium-")
            .tempdir()?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--autoplay-policy=no-user-gesture-required",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let response: Value = ureq::post(&format!("{url}/session"))
            .send_json(capabilities)
            .map_err(|e| anyhow!("starting a browser session: {}", describe(e)))?
            .into_json()?;
        let session = response["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session id in {response}"))?
            .to_owned();
        Ok(Self {
            url,
            session,
            driver,
            _profile: profile,
            artifacts: artifacts.to_owned(),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let request = ureq::request(method, &url).timeout(Duration::from_secs(120));
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        }
        .map_err(|e| anyhow!("{method} {path}: {}", describe(e)))?;
        let value: Value = response.into_json()?;
        Ok(value["value"].clone())
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    fn element(&self, css: &str) -> Result<String> {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no element {css}"))
    }

    pub fn exists(&self, css: &str) -> Result<bool> {
        let found = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(found.as_array().is_some_and(|a| !a.is_empty()))
    }

    pub fn click(&self, css: &str) -> Result<()> {
        let id = self.element(css)?;
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})))?;
        Ok(())
    }

    /// Types into an input; for `<input type=file>`, `text` is the file's path.
    pub fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.element(css)?;
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .ok();
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn script(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Runs `script`, which calls `arguments[0](value)` when it is done.
    pub fn async_script(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Polls `condition` (an expression) until it is truthy.
    pub fn wait_for(&self, what: &str, condition: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.script(&format!("return ({condition});"))?;
            if !(value.is_null()
                || value == json!(false)
                || value == json!(0)
                || value == json!(""))
            {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let _ = self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                bail!("timed out waiting for {what} ({condition})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let data = self.call("GET", "/screenshot", None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .context("decoding a screenshot")?;
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Console messages of level SEVERE since the last call (errors, failed
    /// loads, CSP violations).
    pub fn console_errors(&self) -> Result<Vec<String>> {
        let entries = self.call("POST", "/se/log", Some(json!({"type": "browser"})))?;
        Ok(entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }
}

fn describe(error: ureq::Error) -> String {
    match error {
        ureq::Error::Status(code, response) => {
            format!("{code}: {}", response.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.url, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
