//! The simulated Ollama's model management over real HTTP: tags, show, pull, load/unload,
//! ps, delete and the `/_sim/ollama` controls.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns fail loudly"
)]

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use polylogue_provider_sim::{OllamaModel, OllamaOptions, SimConfig, SimOptions, SimServer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Weights of a pulled model in these tests: 6 MB at 30 MB/s, so a pull takes ~200 ms.
const WEIGHTS: u64 = 6_000_000;
const LOAD: Duration = Duration::from_millis(50);

fn fast() -> OllamaOptions {
    OllamaOptions {
        pull_weights_bytes: WEIGHTS,
        pull_bytes_per_sec: 30_000_000,
        progress_interval: Duration::from_millis(20),
        load_time: LOAD,
        ..OllamaOptions::default()
    }
}

async fn sim_with(ollama: OllamaOptions) -> SimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    SimServer::start_with(
        SimConfig::default(),
        SimOptions {
            ollama,
            ..SimOptions::default()
        },
        listener,
    )
    .await
    .unwrap()
}

async fn sim() -> SimServer {
    sim_with(fast()).await
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(sim: &SimServer, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get(sim: &SimServer, path: &str) -> Value {
    let resp = client()
        .get(format!("{}{path}", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.json().await.unwrap()
}

async fn delete(sim: &SimServer, model: &str) -> reqwest::Response {
    client()
        .delete(format!("{}/api/delete", sim.base_url()))
        .json(&json!({ "model": model }))
        .send()
        .await
        .unwrap()
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

async fn pull_lines(sim: &SimServer, model: &str) -> Vec<Value> {
    let resp = post(sim, "/api/pull", json!({ "model": model })).await;
    assert_eq!(resp.status(), 200);
    ndjson(&resp.text().await.unwrap())
}

fn names(list: &Value) -> Vec<String> {
    list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

fn timestamp(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap(), &Rfc3339).unwrap()
}

fn status(line: &Value) -> &str {
    line["status"].as_str().unwrap_or("")
}

/// Checks the layer lines of a pull: each layer's lines are contiguous, well formed, with
/// `completed` non-decreasing and ending at `total`. Returns `(digest, total, lines)` per layer.
fn layers_of(lines: &[Value]) -> Vec<(String, u64, Vec<u64>)> {
    let mut layers: Vec<(String, u64, Vec<u64>)> = Vec::new();
    for l in lines {
        let digest = l["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:") && digest.len() == 71, "{l}");
        assert_eq!(status(l), format!("pulling {}", &digest[7..19]));
        let total = l["total"].as_u64().unwrap();
        // `completed` is left out while zero, as by Ollama's `omitempty`.
        let completed = l.get("completed").map_or(0, |c| c.as_u64().unwrap());
        assert!(completed <= total, "{l}");
        if layers.last().is_none_or(|(d, _, _)| d != digest) {
            assert!(
                layers.iter().all(|(d, _, _)| d != digest),
                "layer {digest} reported again after another"
            );
            layers.push((digest.to_owned(), total, Vec::new()));
        }
        let (_, t, seen) = layers.last_mut().unwrap();
        assert_eq!(*t, total);
        assert!(seen.last().is_none_or(|last| *last <= completed), "{l}");
        seen.push(completed);
    }
    for (digest, total, seen) in &layers {
        assert_eq!(seen.last(), Some(total), "layer {digest} did not finish");
    }
    layers
}

fn pull_requests(sim: &SimServer) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path == "/api/pull")
        .count()
}

#[tokio::test]
async fn tags_and_show_describe_installed_models() {
    let sim = sim().await;
    let tags = get(&sim, "/api/tags").await;
    let mut listed = names(&tags);
    listed.sort();
    assert_eq!(
        listed,
        ["llama3.2:latest", "mistral:latest", "qwen2.5:7b"].map(String::from)
    );
    let m = find(&tags, "llama3.2:latest");
    assert_eq!(m["model"], "llama3.2:latest");
    timestamp(&m["modified_at"]);
    assert!(m["size"].as_u64().unwrap() > 2_000_000_000);
    let digest = m["digest"].as_str().unwrap();
    assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        m["details"],
        json!({
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        })
    );

    // An untagged name means `:latest`, in any case.
    let resp = post(&sim, "/api/show", json!({"model": "Llama3.2"})).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["details"], m["details"]);
    assert_eq!(v["model_info"]["general.architecture"], "llama");
    assert_eq!(
        v["model_info"]["general.parameter_count"],
        3_200_000_000_u64
    );
    assert_eq!(v["model_info"]["llama.context_length"], 4096);
    assert!(v["template"].as_str().unwrap().contains(".Messages"));
    assert!(v["parameters"].as_str().unwrap().starts_with("stop "));
    let modelfile = v["modelfile"].as_str().unwrap();
    assert!(modelfile.contains("# FROM llama3.2:latest") && modelfile.contains("\nFROM "));
    assert_eq!(v["capabilities"], json!(["completion"]));
    assert!(v["license"].is_string());
    timestamp(&v["modified_at"]);

    let resp = post(&sim, "/api/show", json!({"model": "nope"})).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"error": "model 'nope:latest' not found"}));
    let resp = post(&sim, "/api/show", json!({})).await;
    assert_eq!(resp.status(), 400);
    assert!(sim.requests().iter().any(|r| r.path == "/api/show"));
}

#[tokio::test]
async fn pull_streams_ordered_progress_then_lists_the_model() {
    let sim = sim().await;
    let started = Instant::now();
    let resp = post(&sim, "/api/pull", json!({"model": "tiny:1b"})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines = ndjson(&resp.text().await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(150));

    let n = lines.len();
    assert_eq!(lines[0], json!({"status": "pulling manifest"}));
    assert_eq!(
        lines[n - 3..],
        [
            json!({"status": "verifying sha256 digest"}),
            json!({"status": "writing manifest"}),
            json!({"status": "success"}),
        ]
    );
    let layers = layers_of(&lines[1..n - 3]);
    assert_eq!(
        layers.len(),
        5,
        "weights, template, license, params, config"
    );
    let (_, weights_total, weights_seen) = &layers[0];
    assert_eq!(*weights_total, WEIGHTS);
    assert!(
        weights_seen
            .iter()
            .filter(|c| **c > 0 && **c < WEIGHTS)
            .count()
            >= 3,
        "progress in between: {weights_seen:?}"
    );
    let total: u64 = layers.iter().map(|(_, t, _)| t).sum();

    let tags = get(&sim, "/api/tags").await;
    let m = find(&tags, "tiny:1b");
    assert_eq!(m["size"], total);
    assert_eq!(m["details"]["parameter_size"], "1B");
    assert_eq!(m["details"]["family"], "tiny");
    assert_eq!(names(&tags)[0], "tiny:1b", "most recently modified first");

    let state = sim.ollama_state();
    assert_eq!(state.downloads, 1);
    assert_eq!(state.downloaded_bytes, total);
    assert!(state.pulling.is_empty());
    let pulls: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/pull")
        .collect();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].provider, "ollama");
    assert_eq!(pulls[0].model.as_deref(), Some("tiny:1b"));
    assert!(pulls[0].stream);
}

#[tokio::test]
async fn pull_without_stream_and_pull_of_an_installed_model() {
    let sim = sim().await;
    let resp = post(&sim, "/api/pull", json!({"model": "tiny", "stream": false})).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"status": "success"}));
    assert!(sim.ollama_state().installed.contains(&"tiny:latest".into()));
    assert!(!sim.requests()[0].stream);

    // Every blob is on disk: one complete line per layer, nothing downloaded.
    let lines = pull_lines(&sim, "tiny:latest").await;
    let n = lines.len();
    let layers = layers_of(&lines[1..n - 3]);
    assert!(layers.iter().all(|(_, _, seen)| seen.len() == 1));
    assert_eq!(lines[n - 1], json!({"status": "success"}));
    assert_eq!(sim.ollama_state().downloads, 1);
}

#[tokio::test]
async fn pull_of_a_missing_model_fails() {
    let sim = sim().await;
    let lines = pull_lines(&sim, "missing-model").await;
    assert_eq!(
        lines,
        [
            json!({"status": "pulling manifest"}),
            json!({"error": "pull model manifest: file does not exist"}),
        ]
    );
    let resp = post(
        &sim,
        "/api/pull",
        json!({"model": "missing-model", "stream": false}),
    )
    .await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"error": "pull model manifest: file does not exist"})
    );
    assert!(!names(&get(&sim, "/api/tags").await).contains(&"missing-model:latest".to_owned()));
    let resp = post(&sim, "/api/pull", json!({"stream": false})).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn pull_failing_midway_installs_nothing() {
    let sim = sim().await;
    let lines = pull_lines(&sim, "fail-midway:1b").await;
    let n = lines.len();
    assert_eq!(lines[0], json!({"status": "pulling manifest"}));
    assert_eq!(
        lines[n - 1],
        json!({"error": "max retries exceeded: unexpected EOF"})
    );
    assert!(lines.iter().all(|l| status(l) != "success"));
    let progress: Vec<u64> = lines[1..n - 1]
        .iter()
        .map(|l| l.get("completed").map_or(0, |c| c.as_u64().unwrap()))
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(*progress.last().unwrap() >= WEIGHTS / 2);
    assert!(*progress.last().unwrap() < WEIGHTS);

    let resp = post(
        &sim,
        "/api/pull",
        json!({"model": "fail-midway:1b", "stream": false}),
    )
    .await;
    assert_eq!(resp.status(), 500);
    let state = sim.ollama_state();
    assert!(!state.installed.contains(&"fail-midway:1b".into()));
    assert!(state.pulling.is_empty());
    let resp = post(&sim, "/api/generate", json!({"model": "fail-midway:1b"})).await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn pull_failing_once_fails_halfway_then_resumes_and_succeeds() {
    let sim = sim().await;
    let first = pull_lines(&sim, "fail-once:1b").await;
    assert_eq!(
        first.last(),
        Some(&json!({"error": "max retries exceeded: unexpected EOF"}))
    );
    let second = pull_lines(&sim, "fail-once:1b").await;
    assert_eq!(second.last(), Some(&json!({"status": "success"})));
    let resumed_from = second
        .iter()
        .find_map(|l| l.get("completed").and_then(Value::as_u64))
        .expect("progress lines");
    assert!(resumed_from >= WEIGHTS / 2, "resumed at {resumed_from}");
    assert!(
        sim.ollama_state()
            .installed
            .contains(&"fail-once:1b".into())
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_model_share_one_download() {
    let sim = sim().await;
    let (first, second) = tokio::join!(pull_lines(&sim, "shared:1b"), async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        pull_lines(&sim, "SHARED:1b").await
    });
    for lines in [&first, &second] {
        assert_eq!(lines[0], json!({"status": "pulling manifest"}));
        assert_eq!(lines[lines.len() - 1], json!({"status": "success"}));
        layers_of(&lines[1..lines.len() - 3]);
    }
    // The second request joined a download already under way.
    assert!(
        second[1]["completed"].as_u64().unwrap() > 0,
        "{}",
        second[1]
    );
    let state = sim.ollama_state();
    assert_eq!(state.downloads, 1);
    let total: u64 = layers_of(&first[1..first.len() - 3])
        .iter()
        .map(|(_, t, _)| t)
        .sum();
    assert_eq!(state.downloaded_bytes, total);
    assert_eq!(
        state.installed.iter().filter(|n| *n == "shared:1b").count(),
        1
    );
    assert_eq!(pull_requests(&sim), 2);
}

#[tokio::test]
async fn a_pull_whose_client_leaves_stops_and_resumes() {
    let sim = sim_with(OllamaOptions {
        pull_bytes_per_sec: 15_000_000,
        ..fast()
    })
    .await;
    let resp = post(&sim, "/api/pull", json!({"model": "resume:1b"})).await;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"completed\"") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    drop(body);

    // Nobody waits any more: the download stops with some bytes on disk.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !sim.ollama_state().pulling.is_empty() {
        assert!(Instant::now() < deadline, "pull still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let partial = sim.ollama_state().downloaded_bytes;
    assert!(partial > 0 && partial < WEIGHTS, "{partial}");
    assert!(
        !sim.ollama_state()
            .installed
            .contains(&"resume:1b".to_owned())
    );

    // The server still serves, and the next pull resumes where the first one stopped.
    let chat = post(
        &sim,
        "/api/chat",
        json!({"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(chat.status(), 200);
    let lines = pull_lines(&sim, "resume:1b").await;
    let n = lines.len();
    assert_eq!(lines[n - 1], json!({"status": "success"}));
    let layers = layers_of(&lines[1..n - 3]);
    assert!(
        layers[0].2[0] >= partial,
        "resumed from {partial}: {:?}",
        layers[0].2
    );
    let total: u64 = layers.iter().map(|(_, t, _)| t).sum();
    let state = sim.ollama_state();
    assert_eq!(state.downloaded_bytes, total, "no byte downloaded twice");
    assert_eq!(state.downloads, 2);
}

#[tokio::test]
async fn empty_generate_and_chat_load_models_listed_by_ps() {
    let sim = sim().await;
    assert_eq!(get(&sim, "/api/ps").await, json!({"models": []}));

    let started = Instant::now();
    let resp = post(&sim, "/api/generate", json!({"model": "llama3.2"})).await;
    assert!(started.elapsed() >= LOAD, "loading takes the load time");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "llama3.2");
    assert_eq!(v["response"], "");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "load");
    timestamp(&v["created_at"]);

    let v: Value = post(
        &sim,
        "/api/chat",
        json!({"model": "mistral", "messages": [], "keep_alive": "10m"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["message"], json!({"role": "assistant", "content": ""}));
    assert_eq!(v["done_reason"], "load");

    let ps = get(&sim, "/api/ps").await;
    assert_eq!(
        names(&ps),
        ["mistral:latest", "llama3.2:latest"],
        "longest first"
    );
    let now = OffsetDateTime::now_utc();
    for (name, keep) in [("mistral:latest", 600), ("llama3.2:latest", 300)] {
        let m = find(&ps, name);
        assert_eq!(m["model"], name);
        let size = m["size"].as_u64().unwrap();
        assert!(size > 2_000_000_000, "{m}");
        assert_eq!(m["size_vram"], size);
        assert_eq!(m["digest"].as_str().unwrap().len(), 64);
        assert_eq!(m["details"]["format"], "gguf");
        assert_eq!(m["context_length"], 4096);
        let left = (timestamp(&m["expires_at"]) - now).whole_seconds();
        assert!(
            (keep - 10..=keep).contains(&left),
            "{name} expires in {left} s"
        );
    }

    // A negative keep_alive keeps the model forever.
    post(
        &sim,
        "/api/generate",
        json!({"model": "qwen2.5:7b", "keep_alive": -1}),
    )
    .await;
    let ps = get(&sim, "/api/ps").await;
    assert_eq!(names(&ps)[0], "qwen2.5:7b");
    assert!(timestamp(&ps["models"][0]["expires_at"]).year() > 2200);
    assert_eq!(sim.ollama_state().loaded.len(), 3);

    let resp = post(
        &sim,
        "/api/generate",
        json!({"model": "llama3.2", "keep_alive": "300"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "time: missing unit in duration \"300\"");
}

#[tokio::test]
async fn keep_alive_zero_unloads() {
    let sim = sim().await;
    sim.set_ollama_loaded(["llama3.2", "mistral"]);
    assert_eq!(names(&get(&sim, "/api/ps").await).len(), 2);

    let resp = post(
        &sim,
        "/api/generate",
        json!({"model": "llama3.2", "keep_alive": 0}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["done_reason"], "unload");
    assert_eq!(v["response"], "");
    let v: Value = post(
        &sim,
        "/api/chat",
        json!({"model": "mistral", "messages": [], "keep_alive": "0"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["done_reason"], "unload");
    assert_eq!(v["message"]["content"], "");
    assert_eq!(get(&sim, "/api/ps").await, json!({"models": []}));

    let resp = post(
        &sim,
        "/api/generate",
        json!({"model": "nope", "keep_alive": 0}),
    )
    .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn loading_a_model_that_is_not_installed_is_404_until_pulled() {
    let sim = sim().await;
    for (path, body) in [
        ("/api/generate", json!({"model": "newbie"})),
        ("/api/chat", json!({"model": "newbie", "messages": []})),
    ] {
        let resp = post(&sim, path, body).await;
        assert_eq!(resp.status(), 404, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            v,
            json!({"error": "model \"newbie\" not found, try pulling it first"})
        );
    }
    pull_lines(&sim, "newbie").await;
    let resp = post(&sim, "/api/generate", json!({"model": "newbie"})).await;
    assert_eq!(resp.status(), 200);
    let ps = get(&sim, "/api/ps").await;
    let m = find(&ps, "newbie:latest");
    assert_eq!(m["size"], WEIGHTS + WEIGHTS / 4);
}

#[tokio::test]
async fn chat_loads_an_installed_model_which_expires_after_keep_alive() {
    let sim = sim().await;
    let body = json!({
        "model": "llama3.2",
        "stream": false,
        "keep_alive": "300ms",
        "messages": [{"role": "user", "content": "hello"}],
    });
    let v: Value = post(&sim, "/api/chat", body.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["done_reason"], "stop");
    assert!(
        v["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("tok0 tok1 ")
    );
    let load = v["load_duration"].as_u64().unwrap();
    assert!(load >= 45_000_000, "load_duration {load}");
    assert!(v["total_duration"].as_u64().unwrap() >= load);
    assert_eq!(names(&get(&sim, "/api/ps").await), ["llama3.2:latest"]);

    // Loaded: no load time the second time (streamed this time).
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let lines = ndjson(
        &post(&sim, "/api/chat", streamed)
            .await
            .text()
            .await
            .unwrap(),
    );
    let last = &lines[lines.len() - 1];
    assert_eq!(last["done"], true);
    assert!(last["load_duration"].as_u64().unwrap() < 45_000_000);

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&sim, "/api/ps").await, json!({"models": []}));
}

#[tokio::test]
async fn unknown_models_are_answered_unless_strict() {
    let chat = json!({"model": "sim:latest", "stream": false, "messages": [{"role": "user", "content": "hi"}]});
    let lenient = sim().await;
    let resp = post(&lenient, "/api/chat", chat.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(get(&lenient, "/api/ps").await, json!({"models": []}));

    let strict = sim_with(OllamaOptions {
        strict_models: true,
        ..fast()
    })
    .await;
    let resp = post(&strict, "/api/chat", chat).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"],
        "model \"sim:latest\" not found, try pulling it first"
    );
    let resp = post(
        &strict,
        "/api/generate",
        json!({"model": "sim", "prompt": "hi"}),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let resp = post(
        &strict,
        "/api/chat",
        json!({"model": "mistral", "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn generate_with_a_prompt_answers_in_the_generate_format() {
    let sim = sim().await;
    let resp = post(
        &sim,
        "/api/generate",
        json!({"model": "llama3.2", "prompt": "hello [sim tokens=3]"}),
    )
    .await;
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines = ndjson(&resp.text().await.unwrap());
    assert_eq!(lines.len(), 4);
    let text: String = lines[..3]
        .iter()
        .map(|l| {
            assert_eq!(l["done"], false);
            assert!(l.get("message").is_none());
            l["response"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    assert_eq!(lines[3]["done"], true);
    assert_eq!(lines[3]["done_reason"], "stop");
    assert_eq!(lines[3]["response"], "");
    assert_eq!(lines[3]["eval_count"], 3);

    let v: Value = post(
        &sim,
        "/api/generate",
        json!({"model": "llama3.2", "system": "Summarize.", "prompt": "x [sim summary_words=4]", "stream": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["response"], "Sentence 1 covers the. ");
    let recs = sim.requests();
    assert_eq!(recs[0].path, "/api/generate");
    assert_eq!(recs[0].model.as_deref(), Some("llama3.2"));
}

#[tokio::test]
async fn delete_removes_an_installed_model() {
    let sim = sim().await;
    let resp = delete(&sim, "mistral").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
    assert!(!names(&get(&sim, "/api/tags").await).contains(&"mistral:latest".to_owned()));
    let resp = delete(&sim, "mistral").await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"error": "model 'mistral' not found"}));
    let resp = post(&sim, "/api/show", json!({"model": "mistral"})).await;
    assert_eq!(resp.status(), 404);
    let deletes = sim
        .requests()
        .iter()
        .filter(|r| r.path == "/api/delete")
        .count();
    assert_eq!(deletes, 2);
}

#[tokio::test]
async fn sim_controls_over_http_and_as_methods() {
    let sim = sim().await;
    let url = |p: &str| format!("{}{p}", sim.base_url());
    let v: Value = client()
        .put(url("/_sim/ollama/installed"))
        .json(&json!([
            "a:1b",
            {"name": "big", "weightsBytes": 1000, "memoryBytes": 5000, "family": "gemma", "parameterSize": "2B"}
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["installed"], json!(["a:1b", "big:latest"]));
    let tags = get(&sim, "/api/tags").await;
    assert_eq!(find(&tags, "big:latest")["details"]["family"], "gemma");
    assert!(find(&tags, "a:1b")["size"].as_u64().unwrap() > WEIGHTS);

    let v: Value = client()
        .put(url("/_sim/ollama/loaded"))
        .json(&json!(["big"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["loaded"], json!(["big:latest"]));
    assert_eq!(
        find(&get(&sim, "/api/ps").await, "big:latest")["size"],
        5000
    );

    let v: Value = client()
        .put(url("/_sim/ollama/pull-speed"))
        .json(&json!({"bytesPerSec": 1234}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["pullBytesPerSec"], 1234);
    let v = get(&sim, "/_sim/ollama").await;
    for key in [
        "installed",
        "loaded",
        "pulling",
        "downloads",
        "downloadedBytes",
        "pullBytesPerSec",
    ] {
        assert!(!v[key].is_null(), "{key}");
    }
    let bad = client()
        .put(url("/_sim/ollama/loaded"))
        .json(&json!({"no": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let v: Value = client()
        .post(url("/_sim/ollama/reset"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["installed"].as_array().unwrap().len(), 3);
    assert_eq!(v["loaded"], json!([]));
    assert_eq!(v["pullBytesPerSec"], 30_000_000);

    sim.set_ollama_installed([OllamaModel::new("x", 10).with_memory_bytes(77)]);
    assert_eq!(sim.ollama_state().installed, ["x:latest"]);
    sim.set_ollama_loaded(["x", "y:2b"]);
    let state = sim.ollama_state();
    assert_eq!(state.installed, ["x:latest", "y:2b"]);
    assert_eq!(state.loaded, ["x:latest", "y:2b"]);
    assert_eq!(find(&get(&sim, "/api/ps").await, "x:latest")["size"], 77);
    sim.set_ollama_pull_speed(5);
    assert_eq!(sim.ollama_state().pull_bytes_per_sec, 5);

    // A reset stops pulls in progress.
    let pulling = tokio::spawn({
        let base = sim.base_url();
        async move {
            client()
                .post(format!("{base}/api/pull"))
                .json(&json!({"model": "slow"}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while sim.ollama_state().pulling.is_empty() {
        assert!(Instant::now() < deadline, "pull did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.reset_ollama();
    let lines = ndjson(&pulling.await.unwrap());
    assert_eq!(
        lines[lines.len() - 1],
        json!({"error": "pull canceled: simulator reset"})
    );
    let state = sim.ollama_state();
    assert_eq!(state.installed.len(), 3);
    assert!(state.pulling.is_empty());
    assert_eq!(state.downloads, 0);
    assert_eq!(pull_requests(&sim), 1);
}
