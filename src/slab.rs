//! The smallest slab: a `Vec<Option<T>>` whose free entries are reused, so
//! that indices handed out (poller tokens) stay stable.

/// The index of a free entry of `v`, appending one when none is free.
pub fn vacant<T>(v: &mut Vec<Option<T>>) -> usize {
    match v.iter().position(|e| e.is_none()) {
        Some(i) => i,
        None => {
            v.push(None);
            v.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reuses_free_entries_before_growing() {
        let mut v = vec![Some(1), None, Some(3)];
        assert_eq!(super::vacant(&mut v), 1);
        v[1] = Some(2);
        assert_eq!(super::vacant(&mut v), 3);
        assert_eq!(v.len(), 4);
    }
}
