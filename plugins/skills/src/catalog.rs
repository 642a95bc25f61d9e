//! Finding skills on disk and reading them.
//!
//! Two layouts are read, so skills a user already keeps for other agents
//! work unchanged:
//!
//! - **Dispatch's**: every `*.md` file under `.skills/` (recursively) is a
//!   skill named after the file. If its second line is `---`, its first
//!   line is the summary shown in the tool's description and the body
//!   starts at line three; otherwise the whole file is the body.
//! - **Agent Skills** (Claude Code, Codex, …): `<dir>/<name>/SKILL.md` with
//!   YAML front matter `name` and `description`, under `.skills/` or
//!   `.claude/skills/`. The name is the front matter's (else the
//!   directory's), the summary its `description`, the body what follows
//!   the front matter, plus where the skill's other files are.
//!
//! Precedence, first found wins a name: `<cwd>/.skills`, `<cwd>/.claude/skills`,
//! `<home>/.skills`, `<home>/.claude/skills` — a project's skills shadow the
//! user's. Within one tree a directory's own files come before its
//! subdirectories', each level in name order.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// Directories deeper than this under a tree are not searched.
const MAX_DEPTH: usize = 8;
/// Entries read per tree at most: a skills directory is a handful of
/// files; this only keeps a mistaken one (a symlink to `/`) cheap.
const MAX_ENTRIES: usize = 4096;

/// Where a skill was found and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    /// What `load_skill` takes.
    pub name: String,
    /// The one-line summary, when the file has one.
    pub summary: Option<String>,
    /// The file.
    pub path: PathBuf,
    /// An Agent Skills `SKILL.md` (front matter) rather than Dispatch's
    /// summary-line file.
    pub agent: bool,
}

/// The trees searched for `base` (a working directory or the home
/// directory), in precedence order, and whether only `SKILL.md` files
/// count in each.
fn trees(base: &Path) -> [(PathBuf, bool); 2] {
    [(base.join(".skills"), false), (base.join(".claude").join("skills"), true)]
}

/// Every skill visible from `cwd` (then `home`), by name, shadowed as the
/// module documentation says.
pub fn catalog(cwd: Option<&Path>, home: Option<&Path>) -> BTreeMap<String, Skill> {
    let mut found = BTreeMap::new();
    for base in [cwd, home].into_iter().flatten() {
        for (tree, agent_only) in trees(base) {
            for skill in walk(&tree, agent_only) {
                found.entry(skill.name.clone()).or_insert(skill);
            }
        }
    }
    found
}

/// Whether `name` may be looked up: no path separators, no `..`, not empty.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && !name.contains("..")
}

/// The skills of one tree, breadth first.
fn walk(tree: &Path, agent_only: bool) -> Vec<Skill> {
    let mut skills = Vec::new();
    let mut queue = VecDeque::from([(tree.to_path_buf(), 0usize)]);
    let mut seen = 0usize;
    while let Some((dir, depth)) = queue.pop_front() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        // An Agent Skill's directory: its SKILL.md is the skill, and the
        // rest (references, scripts, templates) is its material.
        if depth > 0 && entries.iter().any(|p| p.file_name().is_some_and(|n| n == "SKILL.md")) {
            if let Some(skill) = agent_skill(&dir.join("SKILL.md")) {
                skills.push(skill);
            }
            continue;
        }
        let mut subdirs = Vec::new();
        for path in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                tracing::warn!(tree = %tree.display(), "too many entries; the rest of this skills tree is not read");
                return skills;
            }
            if path.is_dir() {
                if depth < MAX_DEPTH {
                    subdirs.push(path);
                }
                continue;
            }
            let is_md = path.extension().is_some_and(|e| e == "md");
            if is_md && !agent_only {
                if let Some(skill) = dispatch_skill(&path) {
                    skills.push(skill);
                }
            }
        }
        queue.extend(subdirs.into_iter().map(|d| (d, depth + 1)));
    }
    skills
}

fn dispatch_skill(path: &Path) -> Option<Skill> {
    let name = path.file_stem()?.to_str()?.to_owned();
    if !valid_name(&name) {
        return None;
    }
    let summary =
        std::fs::read_to_string(path).ok().and_then(|text| split_summary(&text).0.map(str::to_owned));
    Some(Skill { name, summary, path: path.to_path_buf(), agent: false })
}

fn agent_skill(path: &Path) -> Option<Skill> {
    let dir_name = path.parent()?.file_name()?.to_str()?.to_owned();
    let text = std::fs::read_to_string(path).ok()?;
    let (front, _) = split_front_matter(&text);
    let front = front.unwrap_or_default();
    let name = front.name.filter(|n| valid_name(n)).unwrap_or(dir_name);
    if !valid_name(&name) {
        return None;
    }
    Some(Skill { name, summary: front.description, path: path.to_path_buf(), agent: true })
}

/// A Dispatch skill file's summary (when line 2 is `---`) and body.
pub fn split_summary(text: &str) -> (Option<&str>, &str) {
    let mut lines = text.splitn(3, '\n');
    let first = lines.next().unwrap_or_default();
    match (lines.next(), lines.next()) {
        (Some(second), rest) if second.trim_end() == "---" => {
            let summary = first.trim();
            ((!summary.is_empty()).then_some(summary), rest.unwrap_or_default())
        }
        _ => (None, text),
    }
}

/// What an Agent Skills front matter says that is used here.
#[derive(Debug, Default, serde::Deserialize)]
struct FrontMatter {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// A `SKILL.md`'s front matter (when it has one that parses) and body.
fn split_front_matter(text: &str) -> (Option<FrontMatter>, &str) {
    let Some(rest) = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n")) else {
        return (None, text);
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            let yaml = &rest[..offset];
            let body = &rest[offset + line.len()..];
            return match serde_yaml_ng::from_str::<FrontMatter>(yaml) {
                Ok(mut front) => {
                    // A folded description may span lines: the catalog
                    // shows one.
                    front.description = front
                        .description
                        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
                        .filter(|d| !d.is_empty());
                    (Some(front), body.trim_start_matches(['\r', '\n']))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a SKILL.md's front matter is not YAML; the file is read whole");
                    (None, text)
                }
            };
        }
        offset += line.len();
    }
    (None, text)
}

/// What `load_skill` returns for `skill`: its body (an Agent Skill's says
/// where its other files are, which it may refer to).
pub fn body(skill: &Skill) -> std::io::Result<String> {
    let text = std::fs::read_to_string(&skill.path)?;
    if !skill.agent {
        return Ok(split_summary(&text).1.to_owned());
    }
    let body = split_front_matter(&text).1;
    let dir = skill.path.parent().unwrap_or(&skill.path);
    Ok(format!("{body}\n\n(This skill's files are in {}.)", dir.display()))
}

/// The `load_skill` description for `skills`.
pub fn describe(skills: &BTreeMap<String, Skill>) -> String {
    if skills.is_empty() {
        return "Load a skill by name. No skills are currently available.".to_owned();
    }
    let mut text = "Load a skill by name. Available skills:".to_owned();
    for skill in skills.values() {
        text.push_str("\n- ");
        text.push_str(&skill.name);
        if let Some(summary) = &skill.summary {
            text.push_str(": ");
            text.push_str(summary);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_summary_is_line_one_only_when_line_two_is_a_rule() {
        assert_eq!(split_summary("Deploys\n---\nstep 1\nstep 2"), (Some("Deploys"), "step 1\nstep 2"));
        assert_eq!(split_summary("no rule\nstep 1"), (None, "no rule\nstep 1"));
        assert_eq!(split_summary("Only\n---"), (Some("Only"), ""));
        assert_eq!(split_summary(""), (None, ""));
    }

    #[test]
    fn the_project_shadows_home_and_a_level_beats_its_subdirectories() {
        let cwd = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        write(&cwd.path().join(".skills/deploy.md"), "Project deploy\n---\nproject body");
        write(&home.path().join(".skills/deploy.md"), "Home deploy\n---\nhome body");
        write(&home.path().join(".skills/review.md"), "review body");
        write(&cwd.path().join(".skills/a/nested.md"), "Deeper\n---\ndeep");
        write(&cwd.path().join(".skills/nested.md"), "Top\n---\ntop");
        let skills = catalog(Some(cwd.path()), Some(home.path()));
        assert_eq!(skills.keys().collect::<Vec<_>>(), ["deploy", "nested", "review"]);
        assert_eq!(skills["deploy"].summary.as_deref(), Some("Project deploy"));
        assert_eq!(body(&skills["deploy"]).unwrap(), "project body");
        assert_eq!(body(&skills["nested"]).unwrap(), "top");
        assert_eq!(skills["review"].summary, None);
        assert_eq!(
            describe(&skills),
            "Load a skill by name. Available skills:\n- deploy: Project deploy\n- nested: Top\n- review"
        );
    }

    #[test]
    fn agent_skills_are_read_from_both_layouts() {
        let cwd = tempfile::tempdir().unwrap();
        write(
            &cwd.path().join(".claude/skills/pdf-tools/SKILL.md"),
            "---\nname: pdf\ndescription: >\n  Fills PDF\n  forms.\n---\n\n# PDF\nUse forms.py.\n",
        );
        // Supporting files of an Agent Skill are not skills of their own.
        write(&cwd.path().join(".claude/skills/pdf-tools/reference.md"), "not a skill");
        write(&cwd.path().join(".skills/lint/SKILL.md"), "---\ndescription: Lints\n---\nrun it");
        write(&cwd.path().join(".skills/lint/reference.md"), "material, not a skill");
        write(&cwd.path().join(".skills/lint/docs/more.md"), "material too");
        let skills = catalog(Some(cwd.path()), None);
        assert_eq!(skills.keys().collect::<Vec<_>>(), ["lint", "pdf"]);
        assert_eq!(skills["pdf"].summary.as_deref(), Some("Fills PDF forms."));
        let pdf = body(&skills["pdf"]).unwrap();
        assert!(pdf.starts_with("# PDF\nUse forms.py.\n"), "{pdf}");
        assert!(pdf.contains("pdf-tools"), "{pdf}");
        assert_eq!(skills["lint"].summary.as_deref(), Some("Lints"));
    }

    #[test]
    fn no_skills_say_so() {
        assert_eq!(describe(&BTreeMap::new()), "Load a skill by name. No skills are currently available.");
        for bad in ["", "a/b", "a\\b", "..", "x..y"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name("deploy-prod"));
    }
}
