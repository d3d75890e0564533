//! The backing names a node is known by. A node whose fd was closed for the budget is
//! reopened by name, and a hard-linked file may be reached through any of its links: the
//! kernel can unlink the name a node was last looked up by and then open the node through
//! another dentry it still holds. So a node keeps every (directory, entry) it was looked up,
//! listed, created, linked or renamed by, most recent first; a name that no longer holds
//! the node is dropped when a reopen finds so.

/// At most this many names per node: a file with more links than this, each looked up and
/// most of them since unlinked, may have to be looked up again (ESTALE) before it opens.
const MAX_NAMES: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct NodeNames {
    /// (FUSE inode of the directory, backing entry name), most recently seen first.
    names: Vec<(u64, String)>,
}

impl NodeNames {
    pub(crate) fn new(parent: u64, entry: &str) -> Self {
        NodeNames {
            names: vec![(parent, entry.to_string())],
        }
    }

    /// The directory of the name this node was last seen by ("..", for a directory).
    pub(crate) fn parent(&self) -> u64 {
        self.names[0].0
    }

    /// The backing entry of the name this node was last seen by.
    pub(crate) fn entry(&self) -> &str {
        &self.names[0].1
    }

    /// Every name, most recent first.
    pub(crate) fn all(&self) -> Vec<(u64, String)> {
        self.names.clone()
    }

    /// The node was found at (`parent`, `entry`): that name goes first.
    pub(crate) fn saw(&mut self, parent: u64, entry: &str) {
        if let Some(i) = self
            .names
            .iter()
            .position(|(p, e)| *p == parent && e == entry)
        {
            self.names[..=i].rotate_right(1);
            return;
        }
        self.names.insert(0, (parent, entry.to_string()));
        self.names.truncate(MAX_NAMES);
    }

    /// The node was renamed from (`from_parent`, `from_entry`) to (`parent`, `entry`).
    pub(crate) fn moved(&mut self, from_parent: u64, from_entry: &str, parent: u64, entry: &str) {
        self.forget(from_parent, from_entry);
        self.saw(parent, entry);
    }

    /// (`parent`, `entry`) no longer holds the node. The last name is kept (for messages
    /// and "..") even then: a reopen by it fails with ESTALE, as it must.
    pub(crate) fn forget(&mut self, parent: u64, entry: &str) {
        if self.names.len() > 1 {
            self.names.retain(|(p, e)| !(*p == parent && e == entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_name_leads_and_old_ones_stay_until_forgotten() {
        let mut n = NodeNames::new(1, "a");
        n.saw(2, "b");
        n.saw(3, "c");
        assert_eq!((n.parent(), n.entry()), (3, "c"));
        n.saw(1, "a");
        assert_eq!(
            n.all(),
            [(1, "a".into()), (3, "c".into()), (2, "b".into())],
            "seeing a known name again moves it first, nothing doubles"
        );
        n.forget(3, "c");
        n.moved(1, "a", 4, "d");
        assert_eq!(n.all(), [(4, "d".into()), (2, "b".into())]);
        n.forget(4, "d");
        n.forget(2, "b");
        assert_eq!(n.all(), [(2, "b".into())], "the last name is never dropped");
    }

    #[test]
    fn names_are_bounded() {
        let mut n = NodeNames::new(1, "x0");
        for i in 1..100 {
            n.saw(1, &format!("x{i}"));
        }
        assert_eq!(n.all().len(), MAX_NAMES);
        assert_eq!(n.entry(), "x99");
    }
}
