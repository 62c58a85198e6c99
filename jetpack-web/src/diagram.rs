//! A machine's graph as an SVG diagram: steps in columns by their distance
//! from the initial steps, edges as curves, each step with its live counts
//! and each edge with the moves of the last hour. No layout engine: machines
//! are small, and a layered layout reads like the `#[next]` lists.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jetpack::RecordedGraph;
use maud::{html, Markup, PreEscaped};

const WIDTH: i64 = 190;
const HEIGHT: i64 = 78;
const COLUMN: i64 = 270;
const ROW: i64 = 118;
const MARGIN: i64 = 30;

/// A number, or `…` while it is being counted (the page's script fills it in).
pub fn num(n: Option<i64>) -> String {
    n.map_or_else(|| "…".to_string(), |n| n.to_string())
}

/// Where each step goes: its column (the longest path to it from an initial
/// step, back edges left out) and its row within the column.
fn layout(graph: &RecordedGraph) -> Vec<(i64, i64)> {
    let n = graph.steps.len();
    let index = |name: &str| graph.steps.iter().position(|s| s.name == name);
    // Back edges (to a step on the current path) are found by a depth-first
    // walk from the initial steps, then every other step not reached.
    let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    let mut back = Vec::new();
    let mut order: Vec<usize> = (0..n).filter(|&i| graph.steps[i].initial).collect();
    order.extend((0..n).filter(|&i| !graph.steps[i].initial));
    for &start in &order {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some(&mut (at, ref mut next)) = stack.last_mut() {
            let successors = &graph.steps[at].next;
            if let Some(to) = successors.get(*next).and_then(|name| index(name)) {
                *next += 1;
                match state[to] {
                    0 => {
                        state[to] = 1;
                        stack.push((to, 0));
                    }
                    1 => back.push((at, to)),
                    _ => {}
                }
            } else if *next < successors.len() {
                *next += 1; // a successor the graph does not list as a step
            } else {
                state[at] = 2;
                stack.pop();
            }
        }
    }
    let mut column = vec![0i64; n];
    // Longest paths over the forward edges: at most n rounds.
    for _ in 0..n {
        let mut changed = false;
        for (from, step) in graph.steps.iter().enumerate() {
            for to in step.next.iter().filter_map(|name| index(name)) {
                if !back.contains(&(from, to)) && to != from && column[to] < column[from] + 1 {
                    column[to] = column[from] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<i64, i64> = BTreeMap::new();
    column
        .iter()
        .map(|&c| {
            let row = rows.entry(c).or_insert(0);
            *row += 1;
            (c, *row - 1)
        })
        .collect()
}

/// The top-left corner of the box of a step at `(column, row)`.
fn corner((column, row): (i64, i64)) -> (i64, i64) {
    (MARGIN + column * COLUMN, MARGIN + row * ROW)
}

/// The diagram of `graph`, its steps linked to their tasks under `base`.
/// `count(kind, state)` and `moved(from, to)` give
/// the numbers drawn now; the page's script keeps them live through the
/// `data-count` and `data-move` attributes.
pub fn svg(
    base: &str,
    graph: &RecordedGraph,
    count: impl Fn(&str, &str) -> Option<i64>,
    about: impl Fn(&str) -> &'static str,
    moved: impl Fn(&str, &str) -> Option<i64>,
) -> Markup {
    let at = layout(graph);
    let columns = at.iter().map(|p| p.0).max().unwrap_or(0) + 1;
    let rows = at.iter().map(|p| p.1).max().unwrap_or(0) + 1;
    let width = 2 * MARGIN + (columns - 1) * COLUMN + WIDTH;
    let height = 2 * MARGIN + (rows - 1) * ROW + HEIGHT + 40;
    let index = |name: &str| graph.steps.iter().position(|s| s.name == name);
    let kind = |step: &str| format!("{}.{step}", graph.machine);
    let mut edges = String::new();
    let mut labels = Vec::new();
    for (from, step) in graph.steps.iter().enumerate() {
        for to_name in &step.next {
            let Some(to) = index(to_name) else { continue };
            let (fx, fy) = corner(at[from]);
            let (tx, ty) = corner(at[to]);
            let (path, lx, ly) = if from == to {
                // A loop: over the box's top right corner.
                let (x, y) = (fx + WIDTH - 40, fy);
                (
                    format!(
                        "M{x},{y} C{},{} {},{} {},{}",
                        x,
                        y - 46,
                        x + 52,
                        y - 46,
                        x + 40,
                        y + 2
                    ),
                    x + 20,
                    y - 40,
                )
            } else if at[to].0 > at[from].0 {
                let (x1, y1, x2, y2) = (fx + WIDTH, fy + HEIGHT / 2, tx, ty + HEIGHT / 2);
                let mid = (x1 + x2) / 2;
                (
                    format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"),
                    mid,
                    (y1 + y2) / 2 - 6,
                )
            } else {
                // Back, or within a column: below the boxes.
                let (x1, y1, x2, y2) = (
                    fx + WIDTH / 2 + 12,
                    fy + HEIGHT,
                    tx + WIDTH / 2 - 12,
                    ty + HEIGHT,
                );
                let low = y1.max(y2) + 44;
                (
                    format!("M{x1},{y1} C{x1},{low} {x2},{low} {x2},{y2}"),
                    (x1 + x2) / 2,
                    low - 8,
                )
            };
            let how = if step.joins.contains(to_name) {
                "join "
            } else if step.waits.contains(to_name) {
                "wait "
            } else {
                ""
            };
            let _ = write!(
                edges,
                r#"<path class="edge" d="{path}" marker-end="url(#arrow)"></path>"#
            );
            labels.push((lx, ly, how, kind(&step.name), kind(to_name)));
        }
    }
    html! {
        svg.diagram viewBox=(format!("0 0 {width} {height}")) width=(width) height=(height)
            role="img" aria-label=(format!("The steps of {}", graph.machine)) {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
                    orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead" {}
                }
            }
            (PreEscaped(edges))
            @for (x, y, how, from, to) in &labels {
                text.edge-label x=(x) y=(y) text-anchor="middle" {
                    (how)
                    tspan data-move=(format!("{from}|{to}")) { (num(moved(from, to))) }
                    " / h"
                }
            }
            @for (i, step) in graph.steps.iter().enumerate() {
                @let (x, y) = corner(at[i]);
                @let k = kind(&step.name);
                @let parked = count(&k, "parked");
                g.step.parked[parked.unwrap_or(0) > 0] data-step=(k) {
                    a href=(format!("{base}/tasks?step={k}")) {
                        rect x=(x) y=(y) width=(WIDTH) height=(HEIGHT) rx="9" {}
                        text.name x=(x + 12) y=(y + 22) { (step.name) @if step.initial { " ▸" } }
                        text.counts x=(x + 12) y=(y + 45) {
                            "ready " tspan data-count=(format!("{k}|ready")) { (about("ready")) (num(count(&k, "ready").zip(count(&k, "scheduled")).map(|(r, s)| r + s))) }
                            " · running " tspan data-count=(format!("{k}|running")) { (about("running")) (num(count(&k, "running"))) }
                        }
                        text.counts x=(x + 12) y=(y + 65) {
                            "waiting " tspan data-count=(format!("{k}|waiting")) { (about("waiting")) (num(count(&k, "waiting"))) }
                            " · parked " tspan.parked-count data-count=(format!("{k}|parked")) { (about("parked")) (num(parked)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(json: &str) -> RecordedGraph {
        RecordedGraph::parse(json).expect("a graph")
    }

    #[test]
    fn steps_go_in_columns_by_their_longest_path_and_loops_do_not_push() {
        let g = graph(
            r#"{"machine":"M","steps":[
                {"name":"A","initial":true,"next":["B","C"],"joins":[],"waits":[]},
                {"name":"B","initial":false,"next":["C"],"joins":[],"waits":[]},
                {"name":"C","initial":false,"next":["A","C"],"joins":[],"waits":[]},
                {"name":"D","initial":false,"next":[],"joins":[],"waits":[]}]}"#,
        );
        assert_eq!(layout(&g), [(0, 0), (1, 0), (2, 0), (0, 1)]);
        let svg = svg("", &g, |_, _| Some(0), |_| "", |_, _| None).into_string();
        assert_eq!(svg.matches("class=\"edge\"").count(), 5);
        assert!(svg.contains(r#"data-count="M.C|parked""#), "{svg}");
        assert!(svg.contains(r#"data-move="M.C|M.A""#), "{svg}");
    }
}
