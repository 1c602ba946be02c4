//! Alertmanager notification -> the markdown a person reads on a phone.
//! Pure: the same notification always renders the same message, so the
//! unit tests below pin what the robots show.
//!
//! Every alert of the group gets a block: status and severity, the
//! summary (the shipped rules say there what expires, or what fails, and
//! within how long), the model and namespace, the API key or material it
//! concerns, since when it fires (or when it resolved), the description,
//! and the runbook link. Firing alerts come first. A group too large for
//! the robot's limit keeps its first blocks and says how many were left
//! out, with a link to Alertmanager.

use crate::alert_relay::payload::{Alert, Notification, Status};

/// The markdown dialect of a robot. WeChat Work's group robot colours text
/// with `<font color="info|comment|warning">` and breaks lines on `\n`;
/// DingTalk's markdown needs a blank line between paragraphs and knows no
/// colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    WeCom,
    DingTalk,
}

impl Flavor {
    fn line_break(self) -> &'static str {
        match self {
            Flavor::WeCom => "\n",
            Flavor::DingTalk => "\n\n",
        }
    }

    fn status(self, status: Status) -> String {
        match (self, status) {
            (Flavor::WeCom, Status::Firing) => "<font color=\"warning\">FIRING</font>".into(),
            (Flavor::WeCom, Status::Resolved) => "<font color=\"info\">RESOLVED</font>".into(),
            (Flavor::DingTalk, Status::Firing) => "**FIRING**".into(),
            (Flavor::DingTalk, Status::Resolved) => "**RESOLVED**".into(),
        }
    }
}

/// Where an alert's runbook is: its `runbook_url` annotation (the
/// Prometheus community's convention) when it has one, else this template
/// with `{alertname}` replaced by the alert's name in lower case (the
/// anchor Markdown renderers give a heading of that name).
#[derive(Debug, Clone, Default)]
pub struct Runbooks {
    pub template: Option<String>,
}

/// The placeholder of [`Runbooks::template`].
pub const ALERTNAME_PLACEHOLDER: &str = "{alertname}";

/// The annotation that names an alert's own runbook.
pub const RUNBOOK_ANNOTATION: &str = "runbook_url";

impl Runbooks {
    pub fn link(&self, alert: &Alert) -> Option<String> {
        if let Some(url) = alert.annotation(RUNBOOK_ANNOTATION) {
            return Some(url.to_string());
        }
        let name = alert.label("alertname")?;
        self.template
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| t.replace(ALERTNAME_PLACEHOLDER, &name.to_lowercase()))
    }
}

/// A rendered notification: the title (DingTalk shows it in the chat list
/// and the phone's notification) and the markdown body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub title: String,
    pub markdown: String,
}

/// Renders `notification` in `flavor`, the body at most `max_bytes` long.
pub fn render(
    notification: &Notification,
    flavor: Flavor,
    runbooks: &Runbooks,
    max_bytes: usize,
) -> Message {
    let br = flavor.line_break();
    let title = title(notification);
    let header = format!(
        "## {} {}{br}",
        flavor.status(notification.status),
        group_name(notification)
    );
    let mut alerts: Vec<&Alert> = notification.alerts.iter().collect();
    // Stable: Alertmanager's order within each status is kept.
    alerts.sort_by_key(|a| a.status == Status::Resolved);
    let blocks: Vec<String> = alerts
        .iter()
        .map(|a| alert_block(a, flavor, runbooks))
        .collect();
    let left_out = notification.truncated_alerts;
    let markdown = fit(&header, &blocks, left_out, notification, br, max_bytes);
    Message { title, markdown }
}

/// `[FIRING:2] SecureChatCertificateExpiring team-a/llama`: what a phone's
/// notification shows first.
fn title(n: &Notification) -> String {
    let status = match n.status {
        Status::Firing => "FIRING",
        Status::Resolved => "RESOLVED",
    };
    let count = n
        .alerts
        .iter()
        .filter(|a| a.status == n.status)
        .count()
        .max(1);
    format!("[{status}:{count}] {}", group_name(n))
}

/// The group's alert name and model, from the labels all its alerts share.
fn group_name(n: &Notification) -> String {
    let common = |key: &str| {
        n.common_labels
            .get(key)
            .or_else(|| n.group_labels.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut parts = vec![common("alertname").unwrap_or_else(|| "alerts".into())];
    match (common("namespace"), common("model")) {
        (Some(ns), Some(model)) => parts.push(format!("{ns}/{model}")),
        (Some(ns), None) => parts.push(ns),
        (None, Some(model)) => parts.push(model),
        (None, None) => {}
    }
    if let Some(severity) = common("severity") {
        parts.push(format!("({severity})"));
    }
    parts.join(" ")
}

fn alert_block(alert: &Alert, flavor: Flavor, runbooks: &Runbooks) -> String {
    let br = flavor.line_break();
    let mut lines = Vec::new();
    let name = alert.label("alertname").unwrap_or("alert");
    let severity = alert
        .label("severity")
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    let headline = alert.annotation("summary").unwrap_or(name);
    lines.push(format!(
        "### {}{severity}: {headline}",
        flavor.status(alert.status)
    ));
    match (alert.label("namespace"), alert.label("model")) {
        (Some(ns), Some(model)) => lines.push(format!("**Model**: {ns}/{model}")),
        (Some(ns), None) => lines.push(format!("**Namespace**: {ns}")),
        (None, Some(model)) => lines.push(format!("**Model**: {model}")),
        (None, None) => {}
    }
    match (alert.label("name"), alert.label("key_id")) {
        (Some(name), Some(id)) => lines.push(format!("**API key**: {name} ({id})")),
        (None, Some(id)) => lines.push(format!("**API key**: {id}")),
        _ => {}
    }
    if let Some(material) = alert.label("material") {
        lines.push(format!("**Material**: {material}"));
    }
    let since = alert.starts_at.format("%Y-%m-%d %H:%M:%S UTC");
    match alert.ended_at() {
        Some(ended) => lines.push(format!(
            "**Resolved**: {} (firing since {since})",
            ended.format("%Y-%m-%d %H:%M:%S UTC")
        )),
        None => lines.push(format!("**Since**: {since}")),
    }
    if let Some(description) = alert.annotation("description") {
        lines.push(format!("> {}", description.trim()));
    }
    let mut links = Vec::new();
    if let Some(url) = runbooks.link(alert) {
        links.push(format!("[Runbook: {name}]({url})"));
    }
    if !alert.generator_url.is_empty() {
        links.push(format!("[Query]({})", alert.generator_url));
    }
    if !links.is_empty() {
        lines.push(links.join(" · "));
    }
    lines.join(br)
}

/// The header and as many whole blocks as fit in `max_bytes`, then a line
/// naming how many alerts were left out. A first block that alone is too
/// long is cut at a character boundary, so a message always says something.
fn fit(
    header: &str,
    blocks: &[String],
    truncated_upstream: u64,
    n: &Notification,
    br: &str,
    max_bytes: usize,
) -> String {
    let more_line = |left: u64| {
        if left == 0 {
            return String::new();
        }
        let mut line = format!("{br}…and {left} more alert(s)");
        if !n.external_url.is_empty() {
            line.push_str(&format!(": [Alertmanager]({})", n.external_url));
        }
        line
    };
    let left_after = |shown: usize| (blocks.len() - shown) as u64 + truncated_upstream;
    let mut out = header.to_string();
    let mut shown = 0;
    for block in blocks {
        let separator = if shown == 0 { "" } else { br };
        let need = separator.len() + block.len() + more_line(left_after(shown + 1)).len();
        if out.len() + need > max_bytes {
            break;
        }
        out.push_str(separator);
        out.push_str(block);
        shown += 1;
    }
    if shown == 0 && !blocks.is_empty() {
        let room = max_bytes.saturating_sub(out.len() + more_line(left_after(1)).len());
        out.push_str(cut(&blocks[0], room));
        shown = 1;
    }
    out.push_str(&more_line(left_after(shown)));
    cut(&out, max_bytes).to_string()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
