-- PostgreSQL's 0007 makes results and errors keep their exact JSON text; SQLite stores them as text already.
SELECT 1;
