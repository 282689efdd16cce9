//! Plain-text tables, CSV and Markdown: the three shapes every listing takes.

use std::io::{self, Write};

#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Free lines under a row (by its index), outside the columns, so a
    /// long detail does not widen every row.
    notes: Vec<(usize, String)>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A line printed under the last row, indented, outside the columns.
    /// Control characters (a container's file names end up here) are
    /// escaped: nothing shown can move the cursor or fake a line.
    pub fn note(&mut self, line: String) {
        if let Some(row) = self.rows.len().checked_sub(1) {
            self.notes.push((row, fleet_core::text::printable(&line)));
        }
    }

    fn notes_of(&self, row: usize) -> impl Iterator<Item = &str> {
        self.notes
            .iter()
            .filter(move |(r, _)| *r == row)
            .map(|(_, line)| line.as_str())
    }

    /// A row; control characters in its cells are escaped, as in notes.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .iter()
                .map(|c| fleet_core::text::printable(c))
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Columns padded to their widest cell, two spaces apart.
    pub fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let widths = self.widths();
        let line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let last = i + 1 == cells.len();
                text.push_str(cell);
                if !last {
                    let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                    text.push_str(&" ".repeat(pad));
                }
            }
            text
        };
        writeln!(out, "{}", line(&self.headers))?;
        for (i, row) in self.rows.iter().enumerate() {
            writeln!(out, "{}", line(row))?;
            for note in self.notes_of(i) {
                writeln!(out, "    {note}")?;
            }
        }
        Ok(())
    }

    pub fn write_markdown(&self, out: &mut dyn Write) -> io::Result<()> {
        let escape = |c: &String| c.replace('|', "\\|").replace('\n', " ");
        let line = |cells: &[String]| {
            format!(
                "| {} |",
                cells.iter().map(escape).collect::<Vec<_>>().join(" | ")
            )
        };
        writeln!(out, "{}", line(&self.headers))?;
        writeln!(
            out,
            "|{}|",
            self.headers
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        )?;
        for (i, row) in self.rows.iter().enumerate() {
            writeln!(out, "{}", line(row))?;
            for note in self.notes_of(i) {
                // A row of its own, the note in the last column.
                let mut cells = vec![String::new(); self.headers.len().saturating_sub(1)];
                cells.push(note.to_string());
                writeln!(out, "{}", line(&cells))?;
            }
        }
        Ok(())
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        widths
    }
}

/// One CSV record (RFC 4180 quoting).
pub fn csv_line(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_and_quotes() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xxxx".into(), "y".into()]);
        let mut out = Vec::new();
        t.write_text(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A     LONGER\nxxxx  y\n");
        t.note("a note longer than every column".into());
        let mut out = Vec::new();
        t.write_text(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     LONGER\nxxxx  y\n    a note longer than every column\n"
        );
        let mut out = Vec::new();
        t.write_markdown(&mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("| xxxx | y |\n|  | a note longer than every column |\n")
        );
        assert_eq!(
            csv_line(&["a,b".into(), "say \"hi\"".into(), "c".into()]),
            "\"a,b\",\"say \"\"hi\"\"\",c"
        );
    }

    /// A container names its files; those names reach tables and notes.
    #[test]
    fn a_name_cannot_fake_a_line_or_move_the_cursor() {
        let mut t = Table::new(&["PATH"]);
        t.row(vec!["data/x\nOK  fake row".into()]);
        t.note("left alone: y\u{1b}[2K\r".into());
        let mut out = Vec::new();
        t.write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "PATH\ndata/x\\nOK  fake row\n    left alone: y\\e[2K\\r\n"
        );
        assert!(!text.contains('\u{1b}') && text.lines().count() == 3);
    }
}
