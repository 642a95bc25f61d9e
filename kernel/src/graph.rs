//! The plugin dependency graph: stable topological order and every problem
//! reported at once.
//!
//! Input is the list of plugins in configuration order with the ids they
//! depend on. The output orders every plugin that *can* be ordered and lists
//! each problem with the plugin it belongs to. Deciding what a problem means
//! for dependents (they are `skipped`) is the host's job, at activation.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// One plugin as the graph sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The plugin id from its manifest.
    pub id: String,
    /// Ids it depends on.
    pub depends_on: Vec<String>,
}

/// A problem found in the graph, attached to the node at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// A second plugin with an id already taken by the plugin at `first`.
    DuplicateId {
        /// The id both claim.
        id: String,
        /// Index of the plugin that keeps the id.
        first: usize,
    },
    /// A dependency that no listed plugin provides.
    UnknownDependency {
        /// The plugin with the dependency.
        id: String,
        /// The id nobody has.
        missing: String,
    },
    /// The plugin is part of a dependency cycle.
    Cycle {
        /// The whole chain, starting and ending with the same id.
        chain: Vec<String>,
    },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::DuplicateId { id, .. } => write!(f, "duplicate plugin id `{id}`"),
            GraphError::UnknownDependency { id, missing } => {
                write!(f, "plugin `{id}` depends on `{missing}`, which is not listed in the configuration")
            }
            GraphError::Cycle { chain } => write!(f, "dependency cycle: {}", chain.join(" -> ")),
        }
    }
}

/// The compiled graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ordering {
    /// Indices of the orderable nodes, dependencies first; ties keep
    /// configuration order. Nodes with a problem are left out.
    pub order: Vec<usize>,
    /// Problems, as (node index, problem), in node order.
    pub problems: Vec<(usize, GraphError)>,
}

/// Order `nodes` by their dependencies.
///
/// A node is left out of [`Ordering::order`] when it has a problem of its own
/// (duplicate id, unknown dependency, cycle). Its dependents stay in the
/// order — placed after it would have been — so that the host can report
/// them as skipped *because of* it rather than as broken themselves.
pub fn order(nodes: &[Node]) -> Ordering {
    let mut problems: Vec<(usize, GraphError)> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut bad = vec![false; nodes.len()];

    for (i, n) in nodes.iter().enumerate() {
        match by_id.get(n.id.as_str()) {
            Some(&first) => {
                problems.push((i, GraphError::DuplicateId { id: n.id.clone(), first }));
                bad[i] = true;
            }
            None => {
                by_id.insert(n.id.as_str(), i);
            }
        }
    }

    // Edges from a node to its dependencies (by index), unknown ones reported.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if bad[i] {
            continue;
        }
        let mut seen = BTreeSet::new();
        for d in &n.depends_on {
            match by_id.get(d.as_str()) {
                Some(&j) => {
                    if seen.insert(j) {
                        deps[i].push(j);
                    }
                }
                None => {
                    problems
                        .push((i, GraphError::UnknownDependency { id: n.id.clone(), missing: d.clone() }));
                    bad[i] = true;
                }
            }
        }
    }

    for (members, chain) in cycles(&deps, &bad, nodes) {
        for m in members {
            bad[m] = true;
            problems.push((m, GraphError::Cycle { chain: chain.clone() }));
        }
    }

    // Kahn's algorithm over the good nodes, always taking the ready node
    // that comes first in the configuration. Edges to bad nodes are ignored:
    // with cycle members removed what is left is acyclic.
    let mut indegree = vec![0usize; nodes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for i in 0..nodes.len() {
        if bad[i] {
            continue;
        }
        for &j in &deps[i] {
            if !bad[j] {
                indegree[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| !bad[i] && indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &k in &dependents[i] {
            indegree[k] -= 1;
            if indegree[k] == 0 {
                ready.insert(k);
            }
        }
    }

    problems.sort_by_key(|(i, _)| *i);
    Ordering { order, problems }
}

/// Strongly connected components with a cycle (Tarjan), each with one chain
/// through all of its members when possible, starting at its first node.
fn cycles(deps: &[Vec<usize>], bad: &[bool], nodes: &[Node]) -> Vec<(Vec<usize>, Vec<String>)> {
    struct Tarjan<'a> {
        deps: &'a [Vec<usize>],
        bad: &'a [bool],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for &w in &self.deps[v] {
                if self.bad[w] {
                    continue;
                }
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                let self_loop = comp.len() == 1 && self.deps[v].contains(&v);
                if comp.len() > 1 || self_loop {
                    comp.sort_unstable();
                    self.out.push(comp);
                }
            }
        }
    }
    let n = deps.len();
    let mut t = Tarjan {
        deps,
        bad,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for (v, &is_bad) in bad.iter().enumerate() {
        if !is_bad && t.index[v].is_none() {
            t.visit(v);
        }
    }
    let mut comps = t.out;
    comps.sort();
    comps
        .into_iter()
        .map(|members| {
            let chain = chain_through(&members, deps).into_iter().map(|i| nodes[i].id.clone()).collect();
            (members, chain)
        })
        .collect()
}

/// A walk from the component's first member back to itself, following
/// dependency edges inside the component and preferring unvisited members,
/// so small cycles are printed whole (`a -> b -> c -> a`).
fn chain_through(members: &[usize], deps: &[Vec<usize>]) -> Vec<usize> {
    let start = members[0];
    let inside = |j: &usize| members.binary_search(j).is_ok();
    // Depth-first search for the longest simple path that closes at start.
    fn dfs(
        v: usize,
        start: usize,
        deps: &[Vec<usize>],
        inside: &dyn Fn(&usize) -> bool,
        path: &mut Vec<usize>,
        best: &mut Vec<usize>,
        budget: &mut usize,
    ) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        for &w in deps[v].iter().filter(|w| inside(w)) {
            if w == start {
                if path.len() + 1 > best.len() {
                    *best = path.clone();
                    best.push(start);
                }
            } else if !path.contains(&w) {
                path.push(w);
                dfs(w, start, deps, inside, path, best, budget);
                path.pop();
            }
        }
    }
    let mut path = vec![start];
    let mut best = Vec::new();
    // Bounded: configurations are small, but never let a pathological graph
    // make start-up exponential.
    let mut budget = 10_000;
    dfs(start, start, deps, &inside, &mut path, &mut best, &mut budget);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(&str, &[&str])]) -> Vec<Node> {
        spec.iter()
            .map(|(id, deps)| Node {
                id: (*id).into(),
                depends_on: deps.iter().map(|d| (*d).to_string()).collect(),
            })
            .collect()
    }

    fn ids(n: &[Node], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| n[i].id.clone()).collect()
    }

    #[test]
    fn dependencies_come_first_and_ties_keep_config_order() {
        let n = nodes(&[("c", &["a"]), ("b", &[]), ("a", &[]), ("d", &["c", "b"])]);
        let o = order(&n);
        assert!(o.problems.is_empty());
        assert_eq!(ids(&n, &o.order), ["b", "a", "c", "d"]);
    }

    #[test]
    fn order_is_stable_across_runs() {
        let n = nodes(&[("x", &[]), ("y", &[]), ("z", &["x"]), ("w", &[])]);
        let first = order(&n);
        for _ in 0..10 {
            assert_eq!(order(&n), first);
        }
        assert_eq!(ids(&n, &first.order), ["x", "y", "z", "w"]);
    }

    #[test]
    fn cycle_is_reported_as_the_whole_chain() {
        let n = nodes(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("free", &[])]);
        let o = order(&n);
        assert_eq!(ids(&n, &o.order), ["free"]);
        assert_eq!(o.problems.len(), 3);
        for (_, p) in &o.problems {
            assert_eq!(p.to_string(), "dependency cycle: a -> b -> c -> a");
        }
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let n = nodes(&[("a", &["a"])]);
        let o = order(&n);
        assert_eq!(o.problems, vec![(0, GraphError::Cycle { chain: vec!["a".into(), "a".into()] })]);
    }

    #[test]
    fn dependents_of_a_cycle_stay_ordered_after_it() {
        let n = nodes(&[("user", &["a"]), ("a", &["b"]), ("b", &["a"])]);
        let o = order(&n);
        assert_eq!(ids(&n, &o.order), ["user"]);
        assert_eq!(o.problems.iter().filter(|(i, _)| *i == 0).count(), 0);
    }

    #[test]
    fn unknown_dependency_and_duplicate_are_all_reported_at_once() {
        let n = nodes(&[("a", &[]), ("b", &["ghost"]), ("a", &[]), ("c", &["b"])]);
        let o = order(&n);
        assert_eq!(
            o.problems,
            vec![
                (1, GraphError::UnknownDependency { id: "b".into(), missing: "ghost".into() }),
                (2, GraphError::DuplicateId { id: "a".into(), first: 0 }),
            ]
        );
        assert_eq!(ids(&n, &o.order), ["a", "c"]);
    }

    #[test]
    fn two_separate_cycles_are_two_chains() {
        let n = nodes(&[("a", &["b"]), ("b", &["a"]), ("x", &["y"]), ("y", &["x"])]);
        let o = order(&n);
        let chains: BTreeSet<String> = o.problems.iter().map(|(_, p)| p.to_string()).collect();
        assert_eq!(
            chains.into_iter().collect::<Vec<_>>(),
            ["dependency cycle: a -> b -> a", "dependency cycle: x -> y -> x"]
        );
    }
}
