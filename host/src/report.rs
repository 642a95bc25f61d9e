//! Rendering plugin reports for `dispatch plugins`.

use crate::supervisor::PluginReport;

/// A plain-text table, one row per plugin, then the full error of each
/// failed or skipped plugin.
pub fn table(reports: &[PluginReport]) -> String {
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            [
                r.order.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
                r.id.clone(),
                r.version.clone().unwrap_or_else(|| "-".into()),
                r.state.as_str().to_owned(),
                r.file.clone(),
            ]
        })
        .collect();
    let header = ["ORDER", "ID", "VERSION", "STATE", "FILE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: [&str; 5], out: &mut String| {
        for (k, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if k == 4 {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    };
    line(header, &mut out);
    for row in &rows {
        line(row.each_ref().map(String::as_str), &mut out);
    }
    let problems: Vec<&PluginReport> = reports.iter().filter(|r| r.error.is_some()).collect();
    if !problems.is_empty() {
        out.push('\n');
        for r in problems {
            out.push_str(&format!(
                "{} {} ({}): {}\n",
                r.state.as_str(),
                r.id,
                r.file,
                r.error.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

/// The `mcp` plugin's servers: one row each, then the error of each that
/// is not connected.
pub fn mcp_table(servers: &[dispatch_contracts::mcp::ServerStatus]) -> String {
    let mut out = String::from("MCP servers:\n");
    if servers.is_empty() {
        out.push_str("  (none configured)\n");
        return out;
    }
    let width = servers.iter().map(|s| s.id.len()).max().unwrap_or(0).max("SERVER".len());
    out.push_str(&format!(
        "  {:<width$}  {:<9}  {:<10}  {:>5}  RESTARTS\n",
        "SERVER", "TRANSPORT", "STATE", "TOOLS"
    ));
    for s in servers {
        out.push_str(&format!(
            "  {:<width$}  {:<9}  {:<10}  {:>5}  {}\n",
            s.id,
            s.transport,
            s.state.as_str(),
            s.tool_count,
            s.restarts
        ));
    }
    for s in servers.iter().filter(|s| s.error.is_some()) {
        out.push_str(&format!("  {} {}: {}\n", s.state.as_str(), s.id, s.error.as_deref().unwrap_or("")));
    }
    out
}
