//! Sample MCP messages of the sizes the benchmarks and tests use.
//!
//! Deterministic: the same text every run, so results compare across runs and machines.

/// A `tools/call` request of about 200 bytes.
pub fn tools_call_small() -> String {
    r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_memory","arguments":{"query":"latest deployment status","limit":10,"threshold":0.75,"tags":["ops","deploy"]}}}"#.to_owned()
}

/// A `tools/list` response of about 2 KB.
pub fn tools_list_2k() -> String {
    let mut tools = Vec::new();
    let names = [
        (
            "search_memory",
            "Search the shared vector memory for similar patterns",
        ),
        (
            "store_pattern",
            "Store a learned pattern with its embedding",
        ),
        (
            "route_task",
            "Route a task to the least-loaded capable agent",
        ),
        ("get_status", "Report the status of an agent swarm"),
        ("spawn_agent", "Start a new agent from a pre-warmed pool"),
        ("cancel_task", "Cancel a queued or running task by id"),
        ("read_state", "Read a shared state value by reference"),
    ];
    for (name, desc) in names {
        tools.push(format!(
            r#"{{"name":"{name}","description":"{desc}","inputSchema":{{"type":"object","properties":{{"id":{{"type":"string","description":"Identifier of the target"}},"limit":{{"type":"integer","minimum":1,"maximum":100}},"verbose":{{"type":"boolean"}}}},"required":["id"]}}}}"#
        ));
    }
    format!(
        r#"{{"jsonrpc":"2.0","id":"req-7f3a","result":{{"tools":[{}],"nextCursor":"c2"}}}}"#,
        tools.join(",")
    )
}

/// A `resources/read` response carrying about 64 KB of text.
pub fn resource_read_64k() -> String {
    let mut text = String::with_capacity(66_000);
    let words = [
        "agent",
        "swarm",
        "consensus",
        "leader",
        "follower",
        "memory",
        "vector",
        "embedding",
        "queue",
        "task",
        "result",
        "latency",
        "throughput",
        "shard",
        "replica",
        "gossip",
    ];
    let mut x = 2463534242u32;
    let mut line = 0;
    while text.len() < 64_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        text.push_str(words[(x % words.len() as u32) as usize]);
        line += 1;
        text.push_str(if line % 12 == 0 { "\\n" } else { " " });
    }
    format!(
        r#"{{"jsonrpc":"2.0","id":9,"result":{{"contents":[{{"uri":"file:///var/log/swarm.log","mimeType":"text/plain","text":"{text}"}}]}}}}"#
    )
}

/// The three benchmark messages with their size labels (`200b`, `2kb`, `64kb`).
pub fn by_size() -> Vec<(&'static str, String)> {
    vec![
        ("200b", tools_call_small()),
        ("2kb", tools_list_2k()),
        ("64kb", resource_read_64k()),
    ]
}
