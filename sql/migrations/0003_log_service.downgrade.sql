-- dropping the parent drops every partition with it
DROP TABLE logs;
