output "coordinator_instance_profile_name" {
  description = "Instance profile of the coordinator hosts."
  value       = aws_iam_instance_profile.coordinator.name
}

output "agent_instance_profile_arn" {
  description = "Instance profile of the agents (launch template)."
  value       = aws_iam_instance_profile.agent.arn
}

output "monitoring_instance_profile_name" {
  description = "Instance profile of the monitoring host."
  value       = aws_iam_instance_profile.monitoring.name
}

output "coordinator_role_arn" {
  description = "The coordinators' role."
  value       = aws_iam_role.coordinator.arn
}

output "agent_role_arn" {
  description = "The agents' role."
  value       = aws_iam_role.agent.arn
}

output "agent_role_unique_id" {
  description = "The agents' role's unique id (AROA…): the first half of each instance's role session name."
  value       = aws_iam_role.agent.unique_id
}

output "monitoring_role_arn" {
  description = "The monitoring host's role."
  value       = aws_iam_role.monitoring.arn
}
