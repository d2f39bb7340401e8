-- PostgreSQL moves the read models to the schema `read` here. SQLite keeps one file and
-- unqualified names: nothing to do.
SELECT 1;
