DROP TABLE message_queue;
DROP FUNCTION message_queue_notify();
