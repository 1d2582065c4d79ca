DROP TABLE users;
DROP TABLE roles;
