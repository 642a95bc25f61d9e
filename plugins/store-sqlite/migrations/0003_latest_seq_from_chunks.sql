-- Schema version 3: a conversation's latest seq is read from its chunks
-- (the last key of its range in the chunks primary key) instead of a
-- counter column rewritten by every append. The counter cost a rewrite of
-- the conversation's row, and of its activity index entry, in every
-- step's transaction; the primary key already holds the same number, and
-- the single writer derives the next seq from it inside the appending
-- transaction, so seqs stay gap-free.
ALTER TABLE conversations DROP COLUMN last_seq;
